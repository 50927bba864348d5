"""One rule for values kept elsewhere: ``{"env": NAME}`` and ``{"file": path}`` in every connection file.

A password-grant connection and a static-token connection read a reference the same way: the value
from a reference equals the value written in the file, whatever the field and whatever the value.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oauthpw_async import ConfigError, load_config
from oauthpw_async.static_config import load_static_config

BASE = {
    "access_token_url": "https://login.example.com/oauth/token",
    "client_id": "cid",
    "client_secret": "csecret",
    "username": "svc",
    "password": "pw",
}
VALUES = st.text(alphabet=string.ascii_letters + string.digits + "-._~+/=!#$%&*", min_size=1, max_size=40)
LINE_ENDS = st.sampled_from(["", "\n", "\r\n"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["client_id", "client_secret", "username", "password"]), VALUES, LINE_ENDS)
def test_a_password_grant_field_from_env_or_file_equals_the_value_written(
    tmp_path: Path, field: str, value: str, end: str
) -> None:
    path = tmp_path / "secret"
    path.write_text(value + end, encoding="utf-8")
    written = load_config({**BASE, field: value})
    from_env = load_config({**BASE, field: {"env": "V"}}, env={"V": value})
    from_file = load_config({**BASE, field: {"file": str(path)}}, env={})
    for config in (from_env, from_file):
        assert repr(config) == repr(written)
        got = getattr(config, field)
        want = getattr(written, field)
        assert (got.reveal() if hasattr(got, "reveal") else got) == (want.reveal() if hasattr(want, "reveal") else want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(VALUES.filter(lambda v: len(v) >= 8), LINE_ENDS)
def test_a_static_token_from_env_file_or_token_file_equals_the_token_written(
    tmp_path: Path, token: str, end: str
) -> None:
    path = tmp_path / "pat"
    path.write_text(token + end, encoding="utf-8")
    forms = [
        ({"token": token}, "the configuration"),
        ({"token": {"env": "PAT"}}, "environment variable PAT"),
        ({"token": {"file": str(path)}}, f"file {path}"),
        ({"Token File": str(path)}, f"file {path}"),
    ]
    for fields, origin in forms:
        config = load_static_config(fields, env={"PAT": token})
        assert config.token.reveal() == token
        assert config.token_from == origin


@pytest.mark.parametrize("loader", ["password", "static"])
def test_a_fifo_named_as_a_file_value_is_refused_at_once_without_reading_it(tmp_path: Path, loader: str) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    load = load_config if loader == "password" else load_static_config
    fields = {**BASE, "password": {"file": str(fifo)}} if loader == "password" else {"token": {"file": str(fifo)}}
    with pytest.raises(ConfigError, match="not a regular file") as info:
        load(fields, env={})
    assert info.value.problems[0].field in ("password", "token")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"file": ""}, "must name the file"),
        ({"file": 3}, "must name the file"),
        ({"env": ""}, "must name an environment variable"),
        ({"env": "MISSING_VARIABLE"}, "environment variable MISSING_VARIABLE is not set"),
        ({"file": "/nonexistent/secret"}, "cannot read the file /nonexistent/secret"),
    ],
)
def test_an_unusable_reference_is_a_config_error_naming_the_field(reference: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config({**BASE, "client_secret": reference}, env={})
    assert [p.field for p in info.value.problems] == ["client_secret"]


def test_a_file_that_is_not_utf8_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xffs3cr3t-value\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text") as info:
        load_config({**BASE, "password": {"file": str(path)}}, env={})
    assert "s3cr3t" not in str(info.value)
