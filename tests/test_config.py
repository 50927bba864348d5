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
    assert PASSWORD not in str(info.value) and "not valid TOML (line 1, column" in str(info.value)
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
    assert {"Acess Token URL", "body_parameters", "use_raw_token", "headers", "username"} <= fields
    # The typo is the one problem with the URL: it is not reported a second time as "missing".
    assert "access_token_url" not in fields
    assert "did you mean 'Access Token URL'" in text  # in the style the key was written in
    assert "set Grant Type (grant_type) instead" in text and "set Password (password) instead" in text
    assert "super-secret-1" not in text and PASSWORD not in text


def test_body_parameters_must_be_json_object() -> None:
    base = {"Access Token URL": "https://a.example.com/t", "Username": "u", "Password": "p"}
    for value, msg in [("{not json", "not valid JSON"), ('"text"', "JSON object"), ("[1]", "JSON object")]:
        with pytest.raises(ConfigError, match=msg):
            load_config({**base, "Body Parameters": value})
    assert load_config({**base, "Body Parameters": {"scope": "openid"}}).body_parameters == {"scope": "openid"}


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
    with pytest.raises(ConfigError, match="contains a control character"):
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


def test_configs_that_ask_for_other_tokens_never_share_one_but_share_their_account() -> None:
    import attrs

    base = load_config(ADMIN_FORM)
    others = [
        attrs.evolve(base, body_parameters={"scope": "write"}),
        attrs.evolve(base, body_parameters={"audience": "https://api.example.com"}),
        attrs.evolve(base, refresh_token_url="https://auth.example.com/refresh"),
        attrs.evolve(base, grant_type="http://auth0.com/oauth/grant-type/password-realm"),
        attrs.evolve(base, scope="admin"),
        attrs.evolve(base, use_raw_token=True),
        attrs.evolve(base, token_path="data.token"),
    ]
    keys = {c.credential_key for c in [base, *others]}
    assert len(keys) == 1 + len(others)  # each asks for another token: none shares a stored or a fleet's token
    assert {c.account_key for c in [base, *others]} == {base.account_key}  # one user: one login budget
    # A secret in Body Parameters is no part of any digest; the password never is.
    with_secret = attrs.evolve(base, body_parameters={**base.body_parameters, "client_assertion": "s3cr3t-value"})
    assert with_secret.credential_key == base.credential_key
    assert attrs.evolve(base, password="another").credential_key == base.credential_key
    other_user = attrs.evolve(base, username="someone.else@example.com")
    assert other_user.account_key != base.account_key and other_user.credential_key != base.credential_key


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


# --- Body Parameters: sent as given; only real conflicts refused -----------------------------------

BASE = {"Access Token URL": "https://a.example.com/t", "Username": "u", "Password": "p"}


def test_body_parameters_keys_admins_use_are_accepted() -> None:
    cfg = load_config(
        {
            **BASE,
            "Client Id": "c1",
            "Body Parameters": '{"scope": "openid", "client_id": "c1", "resource": "r", "audience": "a"}',
        }
    )
    assert cfg.client_id == "c1" and cfg.body_parameters == {"scope": "openid", "resource": "r", "audience": "a"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Client Id": "y", "Body Parameters": {"client_id": "x"}}, "'client_id' differs from Client Id"),
        ({"Client Secret": "s1", "Body Parameters": {"client_secret": "s2"}}, "'client_secret' differs from Client"),
        ({"scope": "a", "Body Parameters": {"scope": "b"}}, "'scope' differs from the scope field"),
    ],
)
def test_body_parameter_conflicting_with_a_dedicated_field_is_refused(fields, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config({**BASE, **fields})
    assert "s1" not in str(info.value) and "s2" not in str(info.value)  # no secret value is echoed


def test_equal_values_given_both_ways_are_fine() -> None:
    cfg = load_config({**BASE, "Client Id": "x", "scope": "s", "Body Parameters": {"client_id": "x", "scope": "s"}})
    assert cfg.client_id == "x" and cfg.body_parameters == {"scope": "s"}


@pytest.mark.parametrize(
    ("key", "advice"),
    [
        ("grant_type", "set Grant Type"),
        ("username", "set Username"),
        ("password", "set Password"),
        ("refresh_token", "each refresh sends the current refresh token"),
    ],
)
def test_body_parameters_that_would_break_the_grant_are_refused(key: str, advice: str) -> None:
    with pytest.raises(ConfigError, match=advice):
        PasswordGrantConfig(**OK, body_parameters={key: "v"})


def test_readme_toml_example_loads_as_written(tmp_path) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    example = next(b for b in blocks if "Body Parameters" in b)
    path = tmp_path / "connection.toml"
    path.write_text(example)
    cfg = load_config(path, env={"SN_CLIENT_SECRET": "cs-value", "SN_PASSWORD": "pw-value"})
    assert cfg.body_parameters == {"scope": "useraccount"} and cfg.password == Secret("pw-value")


# --- the constructor reports every bad field as a ConfigError ---------------------------------------

OK = {"access_token_url": "https://a.example.com/t", "username": "u", "password": "p"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("headers", 5),
        ("headers", ["X-A"]),
        ("headers", {"X-A": 5}),
        ("body_parameters", "scope=x"),
        ("body_parameters", {"scope": ["a"]}),
        ("body_parameters", {"": "x"}),
        ("timeout", "x"),
        ("timeout", None),
        ("timeout", True),
        ("username", 3),
        ("client_id", 7),
        ("password", 3),
        ("client_secret", b"bytes"),
        ("access_token_url", None),
        ("grant_type", 1),
        ("scope", ["a"]),
        ("verify_tls", "false"),
        ("use_raw_token", 1),
        ("client_auth", "basic-plain"),
        ("body_encoding", None),
        ("token_response", 3),
        ("token_path", 1),
        ("max_response_bytes", 1.5e6),
        ("max_response_bytes", "1000000"),
        ("default_expires_in", "3600"),
        ("password", "p\ud800"),
    ],
)
def test_wrong_types_built_in_code_are_config_errors(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        PasswordGrantConfig(**{**OK, field: value})
    assert [p.field for p in info.value.problems] == [field]


def test_every_wrong_type_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        PasswordGrantConfig(**{**OK, "headers": 5, "timeout": "x", "username": 3})
    assert {p.field for p in info.value.problems} == {"headers", "timeout", "username"}
    assert str(info.value).startswith("invalid connection configuration (3 problems):")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_response_bytes", float("inf")),
        ("max_response_bytes", 10**12),
        ("max_response_bytes", 100),
        ("timeout", float("inf")),
        ("timeout", float("nan")),
        ("timeout", 0),
        ("timeout", 86400),
        ("default_expires_in", float("inf")),
        ("default_expires_in", float("nan")),
        ("default_expires_in", 0),
        ("default_expires_in", 10**9),
    ],
)
def test_infinite_nan_and_absurd_numbers_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        PasswordGrantConfig(**{**OK, field: value})


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", "-1", True, [1], "1.5"])
def test_loaded_numbers_are_checked_too(value: object) -> None:
    with pytest.raises(ConfigError, match="max_response_bytes"):
        load_config({**BASE, "max_response_bytes": value})


def test_empty_password_is_refused_for_the_password_grant() -> None:
    with pytest.raises(ConfigError, match="password: is empty"):
        PasswordGrantConfig(**{**OK, "password": ""})
    with pytest.raises(ConfigError, match="password: is empty"):
        load_config({**BASE, "Password": ""})
    # An empty Client Secret in a form means "none".
    assert load_config({**BASE, "Client Secret": ""}).client_secret is None


def test_basic_plain_needs_a_client_id_without_colon() -> None:
    with pytest.raises(ConfigError, match="client_id: is required when client_auth is basic_plain"):
        PasswordGrantConfig(**OK, client_auth="basic_plain")
    with pytest.raises(ConfigError, match="RFC 7617"):
        PasswordGrantConfig(**OK, client_auth="basic_plain", client_id="a:b")
    assert PasswordGrantConfig(**OK, client_auth="basic_plain", client_id="ab").client_auth == "basic_plain"


# --- load-time messages -------------------------------------------------------------------------------


def test_toml_syntax_error_names_line_and_column_not_the_line(tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'"Access Token URL" = "https://a.example.com/t"\nusername = "u"\npassword = "{PASSWORD}" oops\n')
    with pytest.raises(ConfigError) as info:
        load_config(f)
    text = str(info.value)
    assert "(line 3, column" in text and PASSWORD not in text and "oops" not in text


def test_json_syntax_error_names_line_and_column(tmp_path) -> None:
    f = tmp_path / "c.json"
    f.write_text('{\n  "Password": "' + PASSWORD + '",\n  oops\n}')
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert "(line 3, column" in str(info.value) and PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("Client Idd", "'Client Id'"),
        ("client_idd", "'client_id'"),
        ("Acess Token URL", "'Access Token URL'"),
        ("acess_token_url", "'access_token_url'"),
        ("Verify TSL", "'Verify TLS'"),
        ("verify_tsl", "'verify_tls'"),
        ("Body Parametres", "'Body Parameters'"),
    ],
)
def test_did_you_mean_answers_in_the_style_the_key_was_written(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean {suggestion}"):
        load_config({**BASE, key: "x"})


def test_one_problem_is_reported_once_and_counted_in_words() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"Acess Token URL": "https://a.example.com/t", "Username": "u", "Password": "p"})
    assert len(info.value.problems) == 1
    assert str(info.value).startswith("invalid connection configuration (1 problem):")
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, "Client Id": "a", "client_id": "b", "Use Raw Token": "maybe"})
    assert [p.field for p in info.value.problems] == ["client_id", "use_raw_token"]
    assert "is given twice" in str(info.value) and "(2 problems)" in str(info.value)


def test_security_warnings_name_what_weakens_transport() -> None:
    assert PasswordGrantConfig(**OK).security_warnings == ()
    off = PasswordGrantConfig(**{**OK, "verify_tls": False})
    assert len(off.security_warnings) == 1 and "verify_tls = false" in off.security_warnings[0]
    plain = PasswordGrantConfig(
        **{**OK, "access_token_url": "http://auth.internal/t?k=v", "allow_insecure_http": True, "verify_tls": False}
    )
    assert len(plain.security_warnings) == 2 and "plain http://" in plain.security_warnings[1]
    assert "k=v" not in str(plain.security_warnings)
    loopback = PasswordGrantConfig(**{**OK, "access_token_url": "http://127.0.0.1:8080/t"})
    assert loopback.security_warnings == ()


HOSTILE_FILES = {
    "arrays 500 deep": ("c.toml", "x = " + "[" * 500 + "]" * 500, "too deeply"),
    "inline tables 500 deep": ("c.toml", "x = " + "{a = " * 500 + "1" + "}" * 500, "too deeply"),
    "a 4,301-digit integer": ("c.toml", "timeout = " + "9" * 4301, "number too long"),
}


@pytest.mark.parametrize(("name", "text", "says"), HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_hostile_toml_is_a_config_error_naming_the_file(tmp_path, name: str, text: str, says: str) -> None:
    f = tmp_path / name
    f.write_text(f'password = "{PASSWORD}"\n' + text)
    with pytest.raises(ConfigError, match=says) as info:
        load_config(f)
    assert str(f) in str(info.value) and PASSWORD not in str(info.value)


@pytest.mark.parametrize("field", ["timeout", "client_id", "default_expires_in"])
def test_integers_too_long_for_python_are_config_errors(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_config({"access_token_url": "https://a.example.com/t", "username": "u", "password": "p", field: 10**5000})
