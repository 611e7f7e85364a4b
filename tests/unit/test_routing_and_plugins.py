"""Which provider serves a model, and plugins loading through the entry-point group."""

from __future__ import annotations

import pytest
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.errors import ConfigError, NotFound
from llmspool.core.hookspecs import RegisterProvider, hookimpl
from llmspool.core.plugins import load_provider_kinds, plugin_manager
from llmspool.core.pricing import load_price_table
from llmspool.policy.routing import ModelRouter


def test_models_route_by_price_table_prefix_and_fallback() -> None:
    router = ModelRouter.build(
        {"openai": ProviderConfig(), "local": ProviderConfig(plugin="x", models=("llama3.2", "*"))},
        load_price_table(),
    )
    assert router.resolve("gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert router.resolve("openai/gpt-4o") == ("openai", "gpt-4o")
    assert router.resolve("local/llama3.2") == ("local", "llama3.2")
    assert router.resolve("llama3.2") == ("local", "llama3.2")
    assert router.resolve("mistral") == ("local", "mistral")  # "*" takes the unclaimed
    with pytest.raises(NotFound) as caught:
        router.resolve("openai/mistral")
    assert caught.value.code == "model_not_found"


def test_without_a_fallback_unknown_models_are_not_found() -> None:
    router = ModelRouter.build({"openai": ProviderConfig()}, load_price_table())
    with pytest.raises(NotFound, match="gpt-0"):
        router.resolve("gpt-0")


def test_openai_plugin_loads_through_the_entry_point_group() -> None:
    manager = plugin_manager()
    names = {manager.get_name(plugin) for plugin in manager.get_plugins()}
    assert "openai" in names  # the entry point's name, as a third-party plugin would be
    assert "openai" in load_provider_kinds()


class _DuplicatePlugin:
    @hookimpl
    def llmspool_register_providers(self, register: RegisterProvider) -> None:
        register("openai", lambda settings: None)  # type: ignore[arg-type, return-value]


def test_a_kind_registered_twice_names_both_plugins() -> None:
    with pytest.raises(ConfigError, match="registered by both"):
        load_provider_kinds([_DuplicatePlugin()])
