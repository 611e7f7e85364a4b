"""Keys a provider plugin declares for its ``[providers.NAME]`` tables: checked by type when the
config loads, an unknown one refused with the plugin's keys listed, the plugin's defaults used,
a plugin declaring keys wrongly refused at load naming it; and the OpenAI plugin's own keys
(``organization``, ``project``) reaching the upstream as OpenAI's headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.config.sections import ProviderConfig
from llmspool.core.config.tables import ConfigProblems
from llmspool.core.config.values import ConfigKey
from llmspool.core.config_load import load_config
from llmspool.core.errors import ConfigError
from llmspool.core.hookspecs import LazyFactory, RegisterProvider, hookimpl
from llmspool.core.plugins import load_provider_specs, provider_config_keys
from llmspool.core.provider import ProviderSettings, UpstreamRequest, provider_capabilities

REGION = ConfigKey("region", "str", "eu", "which region to call", choices=("eu", "us"))
WINDOW = ConfigKey("window", "duration", "5m", "how long to wait")
KEYS = {"acme": (REGION, WINDOW,
                 ConfigKey("base_url", "str", "https://acme.example/v1", "acme's API")),
        "openai": (ConfigKey("organization", "str", "", "org"),)}


def load(tmp_path: Path, text: str, keys: dict[str, Sequence[ConfigKey]] | None = None
         ) -> ProviderConfig:
    path = tmp_path / "c.toml"
    path.write_text(text)
    config = load_config(path, environ={}, provider_keys=KEYS if keys is None else keys)
    return config.providers["p"] if "p" in config.providers else config.providers["openai"]


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigProblems) as caught:
        load_config(path, environ={}, provider_keys=KEYS)
    return [str(problem) for problem in caught.value.problems]


def test_declared_keys_are_converted_and_the_plugin_defaults_apply(tmp_path: Path) -> None:
    provider = load(tmp_path, '[providers.p]\nplugin = "acme"\nregion = "us"\nwindow = "90s"\n')
    assert provider.options == {"region": "us", "window": 90.0}
    assert provider.base_url == "https://acme.example/v1"  # the plugin's default
    assert provider.api_key_env == ""  # no key unless the operator names one
    settings = ProviderSettings("p", provider, "")
    assert settings.option(REGION) == "us"
    assert settings.option(WINDOW) == 90.0
    unset = ProviderSettings("p", load(tmp_path, '[providers.p]\nplugin = "acme"\n'), "")
    assert unset.option(REGION) == "eu" and unset.option(WINDOW) == 300.0


def test_a_declared_key_of_the_wrong_type_is_refused_naming_it(tmp_path: Path) -> None:
    found = problems(tmp_path, '[providers.p]\nplugin = "acme"\nregion = 5\nwindow = "soon"\n'
                               'base_url = 3\n')
    assert found[0] == "providers.p.region: expected a string, got 5"
    assert found[1].startswith("providers.p.window: expected a duration")
    assert found[2] == "providers.p.base_url: expected a string, got 3"
    assert problems(tmp_path, '[providers.p]\nplugin = "acme"\nregion = "mars"\n') == [
        "providers.p.region: expected one of eu, us, got 'mars'"]


def test_an_unknown_key_is_refused_listing_the_plugins_keys(tmp_path: Path) -> None:
    [found] = problems(tmp_path, '[providers.p]\nplugin = "acme"\nregoin = "us"\n')
    assert found.startswith("providers.p.regoin: unknown key (plugin 'acme' adds region, window;")
    assert "every provider takes plugin, base_url" in found


def test_an_unknown_plugin_is_refused_naming_the_installed_ones(tmp_path: Path) -> None:
    [found] = problems(tmp_path, '[providers.p]\nplugin = "nope"\nwhatever = 1\n')
    assert found.startswith("providers.p.plugin: no plugin provides 'nope' (installed: acme, "
                            "openai")


def test_the_installed_plugins_declare_their_keys(tmp_path: Path) -> None:
    keys = provider_config_keys()
    assert {key.name for key in keys["openai"]} == {"base_url", "organization", "project"}
    assert {key.name for key in keys["ollama"]} == {"base_url"}
    path = tmp_path / "c.toml"
    path.write_text('[providers.openai]\norganization = "org-1"\n\n'
                    '[providers.local]\nplugin = "ollama"\n')
    config = load_config(path, environ={})
    assert config.providers["openai"].options == {"organization": "org-1"}
    assert config.providers["local"].base_url == "http://127.0.0.1:11434/v1"
    path.write_text('[providers.openai]\norganization = 7\n')
    with pytest.raises(ConfigError, match=r"^providers\.openai\.organization: expected a string"):
        load_config(path, environ={})


class _Plugin:
    def __init__(self, kind: str, keys: Sequence[ConfigKey]) -> None:
        self.kind, self.keys = kind, keys

    @hookimpl
    def llmspool_register_providers(self, register: RegisterProvider) -> None:
        register(self.kind, LazyFactory("llmspool_ollama.provider:OllamaProvider"),
                 keys=self.keys)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ((ConfigKey("Region", "str", "", "x"),), "lower_case"),
        ((REGION, REGION), "declared twice"),
        ((ConfigKey("n", "number", 1, "x"),), "is not one of"),  # type: ignore[arg-type]
        ((ConfigKey("api_key_env", "str", "MY_KEY", "x"),), "belongs to the daemon"),
        ((ConfigKey("timeout", "str", "1m", "x"),), "is a duration for every provider"),
        ((ConfigKey("n", "int", "many", "x"),), "its default 'many' is not valid"),
        ((ConfigKey("n", "int", 1, " "),), "no help line"),
    ],
)
def test_a_plugin_declaring_keys_wrongly_is_refused_naming_it(
    keys: Sequence[ConfigKey], message: str
) -> None:
    with pytest.raises(ConfigError, match="provider kind 'odd'") as caught:
        load_provider_specs([_Plugin("odd", keys)])
    assert caught.value.key == "plugins" and message in str(caught.value)


def test_kinds_carry_their_package_version_and_capabilities() -> None:
    specs = load_provider_specs()
    assert specs["openai"].package == "llmspool" and specs["openai"].version
    assert provider_capabilities(specs["openai"].factory) == (
        "chat", "responses", "embeddings", "streaming", "flex", "priority", "batch")
    assert provider_capabilities(specs["ollama"].factory) == (
        "chat", "responses", "embeddings", "streaming")
    assert provider_capabilities(lambda settings: None) is None  # type: ignore[arg-type,return-value]


def test_the_openai_plugin_sends_organization_and_project() -> None:
    seen: list[Mapping[str, str]] = []

    async def record(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.copy())  # case-insensitive, as HTTP headers are
        if request.path.endswith("/models"):
            return web.json_response({"object": "list", "data": []})
        return web.json_response({"ok": True})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        try:
            [factory] = [s.factory for s in load_provider_specs().values() if s.kind == "openai"]
            config = ProviderConfig(base_url=url, options={"organization": "org-1",
                                                           "project": "proj_2"})
            async with factory(ProviderSettings("openai", config, "sk-test")) as provider:
                request = UpstreamRequest(Endpoint.CHAT, "m", b"{}", False, Tier.STANDARD, 5.0,
                                          request_id="req-1")
                async with provider.send(request) as answer:
                    await answer.read()
                await provider.list_models()
        finally:
            await runner.cleanup()

    anyio.run(main)
    data_plane, control_plane = seen
    for headers in (data_plane, control_plane):
        assert headers["OpenAI-Organization"] == "org-1"
        assert headers["OpenAI-Project"] == "proj_2"
    assert data_plane["X-Client-Request-Id"] == "req-1"
