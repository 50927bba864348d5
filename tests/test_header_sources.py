"""Every header source is checked by the same RFC 9110 rule, at the earliest point, naming the header only.

The connection's Headers (a ``ConfigError`` when the file is loaded), a partition's headers (a
``UsageError`` when the ``Partition`` is made), the crawler's headers, a session's and a request's
(see ``tests/test_pipeline.py``): a value holding any control character but HTAB is refused, and
the message names the header and never quotes the value.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oauthpw_async import ConfigError, UsageError, load_config
from oauthpw_async.crawler import Partition
from oauthpw_async.headers import header_problem

CONTROL = [chr(c) for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F]]
names = st.from_regex(r"X-[A-Za-z0-9]{1,12}", fullmatch=True)
secretish = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=12, max_size=40)


def connection(headers: dict[str, str]) -> dict[str, object]:
    return {
        "Access Token URL": "https://login.example.com/oauth/token",
        "Username": "svc",
        "Password": "pw-123456",
        "Headers": headers,
    }


@given(name=names, secret=secretish, bad=st.sampled_from(CONTROL), at=st.integers(0, 40))
def test_connection_headers_with_a_control_character_are_a_config_error(
    name: str, secret: str, bad: str, at: int
) -> None:
    value = secret[:at] + bad + secret[at:]
    with pytest.raises(ConfigError) as caught:
        load_config(connection({name: value}))
    text = str(caught.value)
    assert name in text and "control character" in text
    assert secret not in text and secret[:10] not in text


@given(name=names, secret=secretish, bad=st.sampled_from(CONTROL), at=st.integers(0, 40))
def test_partition_headers_with_a_control_character_are_a_usage_error(
    name: str, secret: str, bad: str, at: int
) -> None:
    value = secret[:at] + bad + secret[at:]
    with pytest.raises(UsageError) as caught:
        Partition("p", headers={name: value})
    text = str(caught.value)
    assert name in text and "Partition('p')" in text and secret[:10] not in text


@given(name=names, value=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t")))
def test_visible_characters_spaces_and_tabs_pass_everywhere(name: str, value: str) -> None:
    assert header_problem(name, value) is None
    Partition("p", headers={name: value})
    assert load_config(connection({name: value})).headers[name] == value
