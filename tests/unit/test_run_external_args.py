"""`omnictl run-external`'s go-plugin handshake defaults come from the plugin's typed `[handshake]` settings (the same
omni.toml the broker reads, unit aliases included); flags win; an unreadable omni.toml falls back to the defaults with a
note on stderr."""
from __future__ import annotations

import pytest

from omniworker.run_external import parse_args


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("OMNI_CONFIG", str(tmp_path / "omni.toml"))
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "p").mkdir()

    def write(text: str) -> None:
        (tmp_path / "omni.toml").write_text(text.replace("PATH", str(tmp_path / "p")))
    return write


def test_handshake_settings_of_the_plugin_are_the_defaults(config):
    config('[plugins.p]\npath = "PATH"\n[plugins.p.handshake]\ncookie_key = "MY_COOKIE"\ncookie_value = "v1"\n'
           'min_port = 12000\nmax_port = 12100\ntimeout_s = 3\n')
    args = parse_args(["p", "--", "true"])
    assert (args.cookie_key, args.cookie_value, args.min_port, args.max_port) == ("MY_COOKIE", "v1", 12000, 12100)
    args = parse_args(["p", "--cookie-key", "FLAG", "--min-port", "13000", "--", "true"])
    assert (args.cookie_key, args.cookie_value, args.min_port) == ("FLAG", "v1", 13000)


def test_an_unknown_plugin_gets_the_default_handshake(config):
    config("")
    args = parse_args(["other", "--", "true"])
    assert (args.cookie_key, args.cookie_value, args.min_port, args.max_port) == ("OMNIVIEW", "other", 10000, 25000)


def test_a_broken_omni_toml_falls_back_to_the_defaults_and_says_so(config, capsys):
    config("[plugins.p\n")
    args = parse_args(["p", "--", "true"])
    assert (args.cookie_key, args.cookie_value) == ("OMNIVIEW", "p")
    assert "cannot read the plugin settings" in capsys.readouterr().err
