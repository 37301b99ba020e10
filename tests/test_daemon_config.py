"""The daemon's config keys ([api] token, ready_grace, max_body, max_batch; [store]) and secret references."""

from __future__ import annotations

import pytest

from latency_router.config import ConfigError, parse_config
from latency_router.secrets import Secret, SecretError, resolve_secret
from support import MINIMAL_CONFIG


def problems(toml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(toml + MINIMAL_CONFIG)
    return info.value.problems


def test_daemon_keys_have_their_defaults_and_parse():
    cfg = parse_config(MINIMAL_CONFIG)
    assert (cfg.api.token, cfg.api.ready_grace_s, cfg.api.max_body_bytes, cfg.api.max_batch) == (None, 30.0, 2**20, 1000)
    assert cfg.store is None
    cfg = parse_config('[api]\ntoken = "env:LR_TOKEN"\nready_grace = "5s"\nmax_body = 65536\nmax_batch = 10\n'
                       '[store]\npath = "state.db"\ninterval = "2s"\n' + MINIMAL_CONFIG)
    assert (cfg.api.token, cfg.api.ready_grace_s, cfg.api.max_body_bytes, cfg.api.max_batch) == ("env:LR_TOKEN", 5.0, 65536, 10)
    assert (cfg.store.path, cfg.store.interval_s) == ("state.db", 2.0)


@pytest.mark.parametrize("toml, expected", [
    ('[api]\ntoken = "hunter2-the-secret"\n', "api.token: write 'env:NAME' or 'file:PATH'"),
    ('[api]\ntoken = "env:"\n', "api.token: write 'env:NAME' or 'file:PATH'"),
    ('[api]\ntoken = "env:NOT-A-NAME"\n', "api.token: env: needs an environment variable name"),
    ('[api]\ntoken = 42\n', "api.token"),
    ('[api]\nready_grace = "0s"\n', "api.ready_grace"),
    ('[api]\nmax_body = 10\n', "api.max_body"),
    ('[api]\nmax_batch = 0\n', "api.max_batch"),
    ('[store]\ninterval = "1s"\n', "store.path"),
    ('[store]\npath = "x.db"\ninterval = "soon"\n', "store.interval"),
])
def test_bad_daemon_keys_are_named(toml, expected):
    found = problems(toml)
    assert any(p.startswith(expected) for p in found), found
    assert not any("hunter2" in p for p in found)  # a secret pasted where a reference belongs is never echoed


def test_secrets_resolve_from_env_and_file_and_never_print(tmp_path, monkeypatch):
    monkeypatch.setenv("LR_TEST_TOKEN", "  from-env \n")
    secret = resolve_secret("env:LR_TEST_TOKEN", "api.token")
    assert secret.reveal() == "from-env"
    assert "from-env" not in repr(secret) and "from-env" not in str(secret) and "from-env" not in f"{secret}"
    path = tmp_path / "token"
    path.write_text("from-file\nsecond line ignored\n")
    assert resolve_secret(f"file:{path}", "api.token").reveal() == "from-file"
    assert isinstance(secret, Secret)


@pytest.mark.parametrize("ref, words", [
    ("env:LR_TEST_UNSET_VARIABLE", "api.token: environment variable LR_TEST_UNSET_VARIABLE is not set"),
    ("file:/nonexistent/token", "api.token: cannot read /nonexistent/token"),
    ("env:LR_TEST_EMPTY", "api.token: the secret in env:LR_TEST_EMPTY is empty"),
])
def test_unresolvable_secrets_name_the_field(ref, words, monkeypatch):
    monkeypatch.delenv("LR_TEST_UNSET_VARIABLE", raising=False)
    monkeypatch.setenv("LR_TEST_EMPTY", "  ")
    with pytest.raises(SecretError, match=words):
        resolve_secret(ref, "api.token")


@pytest.mark.parametrize("api_before, api_after, words", [
    ('token = "env:A"', 'token = "env:B"', "api.token: changed"),
    ('', 'token = "env:B"', "api.token: changed"),
    ('max_body = 65536', 'max_body = 131072', "api.max_body: changed"),
    ('max_batch = 10', 'max_batch = 20', "api.max_batch: changed"),
    ('', 'listen = "127.0.0.1:9999"', "api.listen: changed"),
])
def test_a_reload_refuses_what_only_a_restart_applies(api_before, api_after, words):
    from latency_router.daemon import restart_only_changes

    old = parse_config(f"[api]\n{api_before}\n" + MINIMAL_CONFIG)
    new = parse_config(f"[api]\n{api_after}\n" + MINIMAL_CONFIG)
    assert any(p.startswith(words) for p in restart_only_changes(old, new))
    assert restart_only_changes(old, old) == []
