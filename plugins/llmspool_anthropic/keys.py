"""The config keys the ``anthropic`` provider kind declares for its ``[providers.NAME]`` tables.

``base_url`` gets Anthropic's address as this kind's default. ``api_key_env`` cannot get one:
the daemon keeps the API key's variable the operator's choice for every provider but the one
named ``openai`` (``llmspool.core.config.sections.FIXED_PROVIDER_KEYS``), so a table of this
kind names it itself (``api_key_env = "ANTHROPIC_API_KEY"``, as etc/llmspool.toml shows).
"""

from __future__ import annotations

from llmspool.plugin_api import ConfigKey

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

BASE_URL = ConfigKey(
    "base_url", "str", DEFAULT_BASE_URL,
    "Anthropic's API base URL, ending in /v1 (messages are sent to {base_url}/messages)",
)
ANTHROPIC_VERSION = ConfigKey(
    "anthropic_version", "str", DEFAULT_ANTHROPIC_VERSION,
    "the API version sent as the anthropic-version header on every call",
)
DEFAULT_MAX_TOKENS_KEY = ConfigKey(
    "default_max_tokens", "int", DEFAULT_MAX_TOKENS,
    "max_tokens for a request that gives none (Anthropic requires it; OpenAI's does not)",
)
KEYS = (BASE_URL, ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS_KEY)
