"""Connection config: admin labels and snake_case, env secrets, and every load-time refusal."""

from __future__ import annotations

import os
import stat

import pytest

from oauthpw_async import ConfigError, PasswordGrantConfig, Secret, load_config

from .conftest import PASSWORD

ADMIN_FORM = {
    "Client Id": "crm-connector",
    "Client Secret": "s3cr3t-value",
    "Username": "svc.ingest",
    "Password": PASSWORD,
    "Grant Type": "password",
    "Headers": '{"X-Tenant": "acme"}',
    "Access Token URL": "https://crm.example.com/oauth/token",
    "Refresh Token URL": "https://crm.example.com/oauth/refresh",
    "Use Raw Token": "false",
    "Body Parameters": '{"resource": "https://crm.example.com", "company_id": 42}',
}


def test_admin_labels_load() -> None:
    cfg = load_config(ADMIN_FORM)
    assert cfg.client_id == "crm-connector" and cfg.password == Secret(PASSWORD)
    assert cfg.headers == {"X-Tenant": "acme"}
    assert cfg.body_parameters == {"resource": "https://crm.example.com", "company_id": "42"}
    assert cfg.effective_refresh_url == "https://crm.example.com/oauth/refresh"
    assert cfg.use_raw_token is False


def test_snake_case_and_objects_load() -> None:
    cfg = load_config(
        {
            "access_token_url": "https://a.example.com/t",
            "username": "u",
            "password": "p",
            "body_parameters": {"scope_hint": "x"},
            "use_raw_token": True,
            "client_auth": "basic",
            "client_id": "c",
        }
    )
    assert cfg.use_raw_token and cfg.client_auth == "basic" and cfg.body_parameters == {"scope_hint": "x"}
    assert cfg.effective_refresh_url == "https://a.example.com/t"


def test_secrets_from_environment() -> None:
    cfg = load_config(
        {
            "Access Token URL": "https://a.example.com/t",
            "Username": "u",
            "Password": {"env": "MY_PW"},
            "Client Secret": {"env": "MY_CS"},
        },
        env={"MY_PW": "from-env", "MY_CS": "cs-env"},
    )
    assert cfg.password == Secret("from-env") and cfg.client_secret == Secret("cs-env")
    with pytest.raises(ConfigError, match="environment variable NOPE is not set"):
        load_config(
            {"Access Token URL": "https://a.example.com/t", "Username": "u", "Password": {"env": "NOPE"}}, env={}
        )


def test_json_and_toml_files(tmp_path) -> None:
    import orjson

    j = tmp_path / "conn.json"
    j.write_bytes(orjson.dumps(ADMIN_FORM))
    assert load_config(j).username == "svc.ingest"
    t = tmp_path / "conn.toml"
    t.write_text(
        '[connection]\n"Access Token URL" = "https://a.example.com/t"\nusername = "u"\n'
        'password = { env = "PW" }\n[connection.body_parameters]\nresource = "r"\n'
    )
    cfg = load_config(t, env={"PW": "x"})
    assert cfg.body_parameters == {"resource": "r"}


def test_broken_file_names_position_not_content(tmp_path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(f'password = "{PASSWORD}\n')
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert PASSWORD not in str(info.value) and "not valid toml" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_every_problem_reported_at_once_without_secrets() -> None:
    bad = {
        "Client Secret": "super-secret-1",
        "Password": PASSWORD,
        "Acess Token URL": "https://x.example.com",  # typo
        "Body Parameters": '{"grant_type": "x", "password": "y", "nested": {"a": 1}}',
        "Use Raw Token": "maybe",
        "Headers": "[1, 2]",
    }
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    text = str(info.value)
    fields = {p.field for p in info.value.problems}
    assert {"Acess Token URL", "body_parameters", "use_raw_token", "headers", "access_token_url", "username"} <= fields
    assert "did you mean 'access_token_url'" in text
    assert "use grant_type (Grant Type) instead" in text and "use password (Password) instead" in text
    assert "super-secret-1" not in text and PASSWORD not in text


def test_body_parameters_must_be_json_object() -> None:
    base = {"Access Token URL": "https://a.example.com/t", "Username": "u", "Password": "p"}
    for value, msg in [("{not json", "not valid JSON"), ('"text"', "JSON object"), ("[1]", "JSON object")]:
        with pytest.raises(ConfigError, match=msg):
            load_config({**base, "Body Parameters": value})
    with pytest.raises(ConfigError, match="use scope instead"):
        load_config({**base, "Body Parameters": {"scope": "openid"}})


@pytest.mark.parametrize(
    ("url", "msg"),
    [
        ("ftp://a.example.com/t", r"http\(s\) URL"),
        ("https://user:pw@a.example.com/t", "must not carry credentials"),
        ("http://auth.example.com/t", "unencrypted"),
        ("https:///t", "no host"),
        ("https://a.example.com/t#frag", "fragment"),
    ],
)
def test_bad_urls_refused(url: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg) as info:
        PasswordGrantConfig(access_token_url=url, username="u", password="p")
    assert "pw@" not in str(info.value) or "user:password@" in str(info.value)


def test_plain_http_allowed_for_loopback_or_explicitly() -> None:
    for host in ("127.0.0.1:8080", "localhost", "[::1]"):
        PasswordGrantConfig(access_token_url=f"http://{host}/t", username="u", password="p")
    PasswordGrantConfig(access_token_url="http://auth.internal/t", username="u", password="p", allow_insecure_http=True)


def test_client_auth_rules() -> None:
    with pytest.raises(ConfigError, match="public clients must not send a secret"):
        PasswordGrantConfig(
            access_token_url="https://a.example.com", username="u", password="p", client_auth="none", client_secret="x"
        )
    with pytest.raises(ConfigError, match="client_id: is required when client_auth is basic"):
        PasswordGrantConfig(access_token_url="https://a.example.com", username="u", password="p", client_auth="basic")


def test_header_injection_refused() -> None:
    with pytest.raises(ConfigError, match="without line breaks"):
        PasswordGrantConfig(
            access_token_url="https://a.example.com", username="u", password="p", headers={"X-A": "v\r\nEvil: 1"}
        )


def test_non_password_grant_may_omit_credentials() -> None:
    cfg = PasswordGrantConfig(access_token_url="https://a.example.com", grant_type="urn:vendor:login")
    assert cfg.username is None


def test_repr_and_str_mask_secrets() -> None:
    cfg = load_config(ADMIN_FORM)
    for text in (repr(cfg), str(cfg), repr(cfg.password), f"{cfg.client_secret}"):
        assert PASSWORD not in text and "s3cr3t-value" not in text and "acme" not in text
    assert cfg.password is not None and cfg.password.reveal() == PASSWORD


def test_secret_refuses_pickling() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("x"))


def test_credential_key_is_stable_and_secret_free() -> None:
    a, b = load_config(ADMIN_FORM), load_config(ADMIN_FORM)
    assert a.credential_key == b.credential_key and PASSWORD not in a.credential_key


def test_ca_bundle_is_checked_when_used_not_when_built(tmp_path) -> None:
    from oauthpw_async.transport import ssl_context

    config = PasswordGrantConfig(
        access_token_url="https://a.example.com", username="u", password="p", ca_bundle=str(tmp_path / "nope.pem")
    )
    with pytest.raises(ConfigError, match="ca_bundle: cannot be used"):
        ssl_context(config)


def test_file_store_permissions(tmp_path) -> None:
    # Covered more fully in test_provider; here only that the mode is private.
    from oauthpw_async import FileTokenStore, StoredToken
    from oauthpw_async.grant import Instant, Token

    store = FileTokenStore(tmp_path / "t.json")
    store.save(
        "k",
        StoredToken(
            Token(
                access_token=Secret("a"),
                authorization="Bearer a",
                token_type="Bearer",
                issued=Instant(1.0, 2.0),
                lifetime=10,
                lifetime_source="expires_in",
            ),
            1,
        ),
    )
    assert stat.S_IMODE(os.stat(tmp_path / "t.json").st_mode) == 0o600
    loaded = store.load("k")
    assert loaded is not None and loaded.token.access_token == Secret("a")
