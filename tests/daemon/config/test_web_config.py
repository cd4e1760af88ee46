"""The `[web]` section: defaults, the listen address, and the token (written by the daemon
when not set; a set one must be long enough)."""

from __future__ import annotations

import pytest

from selvad.config.daemon import parse_config
from selvad.config.schema import ConfigError


def _web(**web: object) -> object:
    return parse_config({"web": web}, "/etc/selvad/selvad.toml").web


def test_defaults_serve_on_loopback() -> None:
    web = _web()
    assert web.enabled and web.listen == "127.0.0.1:8765" and web.loopback
    assert (web.host, web.port) == ("127.0.0.1", 8765)


def test_ipv6_loopback_and_free_port() -> None:
    web = _web(listen="[::1]:0")
    assert (web.host, web.port, web.loopback) == ("::1", 0, True)


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        _web(listen="0.0.0.0:8765", token="short")
    assert "selvad.toml:web.token: too short to keep the page private" in str(err.value)


def test_off_loopback_without_token_uses_the_generated_one() -> None:
    assert _web(listen="0.0.0.0:8765").token == ""  # the daemon writes <state_dir>/web_token
    assert not _web(listen="0.0.0.0:8765", token="s" * 16).loopback
    assert not _web(listen="0.0.0.0:8765", enabled=False).enabled


def test_bad_listen_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        _web(listen="8765")
    assert "web.listen: not an address" in str(err.value)
    assert "HOST:PORT" in str(err.value)
