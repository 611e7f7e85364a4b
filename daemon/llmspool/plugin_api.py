"""The API a provider plugin uses: the one stable place to import from.

Everything a plugin needs from the daemon is re-exported here, from the core layer
(``llmspool.core``) where it lives: the hook and its marker, the provider protocols and the
values they exchange, the errors a plugin raises, the batch vocabulary, and the HTTP helpers
the built-in plugins share. A plugin that imports only from this module keeps working when the
daemon's modules move; ``pyproject.toml``'s import-linter contract holds the built-in plugins
(plugins/llmspool_*) to it. See docs/plugins.md.
"""

from llmspool.core.batch_lines import (
    CANCELLED,
    EXPIRED,
    BatchFiles,
    BatchLine,
    ResultWriter,
    read_input_lines,
)
from llmspool.core.calls import Endpoint, Tier, Usage
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.config.values import ConfigKey
from llmspool.core.connection_stats import ConnectionCounter
from llmspool.core.errors import (
    ApiError,
    BadUpstreamAnswer,
    ConfigError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamError,
    UpstreamUnreachable,
)
from llmspool.core.hookspecs import RegisterProvider, hookimpl
from llmspool.core.http1 import ConnectTimeout, Http1Pool, Http1Response
from llmspool.core.http_pool import pooled_http1, pooled_session, unreachable
from llmspool.core.provider import (
    BatchApi,
    BatchCapabilities,
    BatchProvider,
    BatchSubmission,
    DelegatedBatches,
    LazyFactory,
    Provider,
    ProviderFactory,
    ProviderSettings,
    UpstreamRequest,
    UpstreamResponse,
    batch_capabilities_of,
    provider_capabilities,
)
from llmspool.core.remote_batch import STATUSES, TERMINAL, BatchError, RemoteBatch

__all__ = [
    "CANCELLED",
    "EXPIRED",
    "STATUSES",
    "TERMINAL",
    "ApiError",
    "BadUpstreamAnswer",
    "BatchApi",
    "BatchCapabilities",
    "BatchError",
    "BatchFiles",
    "BatchLine",
    "BatchProvider",
    "BatchSubmission",
    "ConfigError",
    "ConfigKey",
    "ConnectTimeout",
    "ConnectionCounter",
    "DelegatedBatches",
    "Endpoint",
    "Http1Pool",
    "Http1Response",
    "InvalidRequest",
    "LazyFactory",
    "NotFound",
    "PermissionDenied",
    "Provider",
    "ProviderConfig",
    "ProviderFactory",
    "ProviderSettings",
    "RemoteBatch",
    "RegisterProvider",
    "ResultWriter",
    "ServiceUnavailable",
    "Tier",
    "TooManyRequests",
    "UpstreamError",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamUnreachable",
    "Usage",
    "batch_capabilities_of",
    "hookimpl",
    "pooled_http1",
    "pooled_session",
    "provider_capabilities",
    "read_input_lines",
    "unreachable",
]
