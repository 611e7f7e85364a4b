"""The config keys the ``openai`` provider kind declares for its ``[providers.NAME]`` tables.

``organization`` and ``project`` are sent as OpenAI's ``OpenAI-Organization`` and
``OpenAI-Project`` headers on every call (data plane and control plane), for a key that
belongs to several organizations or projects: usage and limits are then counted there.
"""

from __future__ import annotations

from llmspool.plugin_api import ConfigKey

BASE_URL = ConfigKey(
    "base_url", "str", "https://api.openai.com/v1",
    "the API's base URL, ending in /v1 (any OpenAI-compatible API)",
)
ORGANIZATION = ConfigKey(
    "organization", "str", "",
    "OpenAI organization id (org-...) to bill and rate-limit calls under; \"\": the key's default",
)
PROJECT = ConfigKey(
    "project", "str", "",
    "OpenAI project id (proj_...) to bill and rate-limit calls under; \"\": the key's default",
)
KEYS = (BASE_URL, ORGANIZATION, PROJECT)
