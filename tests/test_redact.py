"""One redaction module: an API error page echoing the token in any encoding never shows it in the error."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Callable
from urllib.parse import quote

import orjson
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthpw_async import AuthorizedSession, HTTPStatusError, StaticToken
from oauthpw_async.redact import SECRET_NAME, excerpt, is_credential_parameter, scrub, without_credentials
from oauthpw_async.testing import AuthServerState, LocalServer

# Visible ASCII, as a token in a header must be (RFC 9110 field values).
TOKEN_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
tokens = st.text(TOKEN_CHARS, min_size=12, max_size=320)


def _b64(data: bytes, urlsafe: bool, padded: bool) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    return text if padded else text.rstrip("=")


def _wrapped(text: str, width: int) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def _split(text: str, cuts: list[int], gap: str) -> str:
    out, last = [], 0
    for cut in sorted({c % len(text) for c in cuts}):
        out.append(text[last:cut])
        last = cut
    out.append(text[last:])
    return gap.join(out)


#: How a server may echo a value: name -> (value, prefix bytes, cut points, wrap width) -> body text.
ENCODINGS: dict[str, Callable[[str, str, list[int], int], str]] = {
    "base64": lambda v, pre, _c, _w: _b64((pre + v).encode(), False, True),
    "base64-nopad": lambda v, pre, _c, _w: _b64((pre + v + "}").encode(), False, False),
    "base64url": lambda v, pre, _c, _w: _b64((pre + v).encode(), True, True),
    "base64url-nopad": lambda v, pre, _c, _w: _b64((pre + v).encode(), True, False),
    "base64-wrapped": lambda v, pre, _c, w: _wrapped(_b64((pre + v).encode(), False, True), w),
    "hex": lambda v, pre, _c, _w: (pre + v).encode().hex(),
    "HEX": lambda v, pre, _c, _w: (pre + v).encode().hex().upper(),
    "hex-wrapped": lambda v, pre, _c, w: _wrapped((pre + v).encode().hex(), w),
    "lines": lambda v, _p, c, _w: "sent: " + _split(v, c, "\n"),
    "crlf-indented": lambda v, _p, c, _w: "sent:\r\n  " + _split(v, c, "\r\n  "),
    "json-lines": lambda v, _p, c, _w: orjson.dumps({"sent": _split(v, c, "\n")}).decode(),
    "base64-in-json": lambda v, pre, _c, _w: orjson.dumps({"blob": _b64((pre + v).encode(), False, True)}).decode(),
}


def _echo_app(app: web.Application, auth: AuthServerState) -> None:
    async def echo(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        value = header if request.query["what"] == "header" else header.split(" ", 1)[1]
        cuts = [int(c) for c in request.query["cuts"].split(",")]
        body = ENCODINGS[request.query["enc"]](value, request.query["pre"], cuts, int(request.query["width"]))
        return web.Response(status=400, text=f"request refused ({body}) try again later")

    app.router.add_get("/api/echo", echo)


_B64_RUN = re.compile(r"[A-Za-z0-9+/_\-=]{4,}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{4,}")


def _readable(text: str) -> list[str]:
    """Everything a reader could get out of ``text``: itself, without gaps, and decoded runs."""
    joined = re.sub(r"\s+|\\[nrt]", "", text)
    out = [text, joined]
    for run in _B64_RUN.findall(joined):
        for start in range(4):
            piece = run[start:].replace("=", "").replace("-", "+").replace("_", "/")
            try:
                out.append(base64.b64decode(piece[: len(piece) // 4 * 4]).decode("latin-1"))
            except (binascii.Error, ValueError):  # pragma: no cover - whole quanta always decode
                pass
    for run in _HEX_RUN.findall(joined):
        for start in range(2):
            piece = run[start:]
            out.append(bytes.fromhex(piece[: len(piece) // 2 * 2]).decode("latin-1"))
    return out


def _leaks(text: str, token: str) -> bool:
    """Whether any 10-character piece of ``token`` can be read out of ``text``."""
    pieces = {token[i : i + 10] for i in range(len(token) - 9)}
    return any(piece in readable for readable in _readable(text) for piece in pieces)


#: What every error of the echo test says besides the token: a token generated to contain a piece of
#: it ("...TPStatusEr...") would be "found" in the class name, not leaked.
_MESSAGE_WORDS = (
    'HTTPStatusError("GET failed: HTTP 400 for http://127.0.0.1:/api/echo '
    "(body: 'request refused (***) try again later')\")"
)


def _not_in_the_message(token: str) -> bool:
    return not _leaks(_MESSAGE_WORDS, token)


async def _error_for(token: str, what: str, enc: str, pre: str, cuts: list[int], width: int) -> HTTPStatusError:
    async with (
        LocalServer(api=_echo_app) as server,
        AuthorizedSession(StaticToken(token), base_url=server.base_url) as session,
    ):
        params = {"what": what, "enc": enc, "pre": pre, "cuts": ",".join(map(str, cuts)), "width": str(width)}
        answer = await session.get("/api/echo", params=params, raise_for_status=False)
        assert answer.status == 400 and answer.body  # the body itself is the caller's, unscrubbed
        try:
            answer.raise_for_status()
        except HTTPStatusError as exc:
            return exc
    raise AssertionError("a 400 answer raised nothing")


@settings(max_examples=120, deadline=None)
@given(
    token=tokens.filter(_not_in_the_message),
    what=st.sampled_from(["header", "token"]),
    enc=st.sampled_from(sorted(ENCODINGS)),
    pre=st.sampled_from(["", "A", "Au", "Authorization: ", "x=1&auth="]),
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=3),
    width=st.sampled_from([64, 76, 7]),
)
def test_an_error_page_echoing_the_token_in_any_encoding_never_shows_it(
    token: str, what: str, enc: str, pre: str, cuts: list[int], width: int
) -> None:
    exc = asyncio.run(_error_for(token, what, enc, pre, cuts, width))
    assert exc.status == 400
    for text in (str(exc), repr(exc), exc.excerpt, repr(exc.args)):
        assert not _leaks(text, token), (enc, text)
    assert "***" in exc.excerpt


@settings(max_examples=200, deadline=None)
@given(token=tokens, enc=st.sampled_from(sorted(ENCODINGS)), cuts=st.lists(st.integers(1, 400), max_size=3))
def test_scrub_finds_every_encoding_at_any_offset(token: str, enc: str, cuts: list[int]) -> None:
    for pre in ("", "x", "xy"):
        body = "before " + ENCODINGS[enc](token, pre, cuts or [5], 76) + " after"
        assert not _leaks(scrub(body, [token]), token)
        assert not _leaks(excerpt(body.encode(), [token], limit=10_000), token)


def test_ordinary_text_around_an_encoded_token_stays_readable() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.payload.signature-part"
    body = f"upstream said: {base64.b64encode(token.encode()).decode()} (code E42, retry in 5 s)"
    shown = excerpt(body.encode(), [token])
    assert shown == "upstream said: *** (code E42, retry in 5 s)"


def test_one_list_of_secret_looking_names() -> None:
    for name in ("access_token", "id_token", "client_secret", "Password", "passwd", "api-key", "apiKey", "signature"):
        assert SECRET_NAME.search(name), name
    for name in ("instance_url", "error_code", "scope", "expires_in", "primary_key"):
        assert not SECRET_NAME.search(name), name
    # A position needs its paging parameters, however token-like their names look.
    for name in ("pageToken", "nextPageToken", "$skiptoken", "$deltatoken", "cursor", "continuationToken"):
        assert not is_credential_parameter(name), name
    for name in ("access_token", "API-Key", "token", "key", "client_secret"):
        assert is_credential_parameter(name), name


def test_without_credentials_keeps_paging_and_drops_tokens_anywhere_in_the_query() -> None:
    token = "EAAG-live-token-1234"
    url = (
        "https://graph.example.com/v19.0/me/feed?fields=id%2Cmessage&limit=25"
        f"&access_token={token}&after=QVFIUk&state=x{token}y#frag"
    )
    saved_url, saved_params = without_credentials(
        url, (("since", "2024"), ("Api-Key", "k-1"), ("t", token.upper().lower())), [token]
    )
    assert saved_url == "https://graph.example.com/v19.0/me/feed?fields=id%2Cmessage&limit=25&after=QVFIUk"
    assert saved_params == (("since", "2024"),)
    assert without_credentials("/items?page=2", (), [token]) == ("/items?page=2", ())


@settings(max_examples=200, deadline=None)
@given(
    token=tokens,
    name=st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=8),
    enc=st.sampled_from(["raw", "base64", "hex", "json-lines"]),
    around=st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), max_size=6),
)
def test_a_parameter_holding_the_token_in_any_encoding_is_not_saved(
    token: str, name: str, enc: str, around: str
) -> None:
    value = around + (token if enc == "raw" else ENCODINGS[enc](token, "", [3], 76)) + around
    url, params = without_credentials(f"/items?page=2&{name}={quote(value, safe='')}", ((name, value),), [token])
    assert url == "/items?page=2" and params == ()
