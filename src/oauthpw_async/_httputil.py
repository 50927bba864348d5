"""HTTP helpers without I/O: printable URLs, origins, scrubbed body excerpts, rate-limit headers.

Shared by the sans-IO grant, the token transport, the authorized session and the crawler,
so each rule (what a URL prints as, how long a server asked us to wait) lives in one place.
"""

from __future__ import annotations

import email.utils
import functools
import html.entities
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

import orjson

__all__ = ["excerpt", "holds_secret", "origin", "parse_retry_after", "rate_limit_delay", "safe_url", "scrub"]

MASK = "********"
"""What a secret prints as, everywhere."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to print."""
    try:
        p = urlsplit(url)
        host = p.hostname or ""
        if p.port:
            host = f"{host}:{p.port}"
        return urlunsplit((p.scheme, host, p.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def origin(url: str) -> str:
    """The RFC 6454 origin of ``url`` as ``scheme://host:port`` (default port made explicit).

    Two URLs may share a token only when their origins are equal. An unparsable URL has the
    origin ``"null"``, which equals no configured origin.
    """
    try:
        p = urlsplit(url)
        scheme = p.scheme.lower()
        host = (p.hostname or "").lower()
        port = p.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return "null"
    if not scheme or not host or port is None:
        return "null"
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


# --- scrubbing secrets out of quoted text -------------------------------------------------------

# The HTML5 named character references of each character (``+`` -> ``plus;``), so a secret is
# found however a server's HTML-escaping spelled it.
_HTML_NAMES: dict[str, list[str]] = {}
for _name, _char in html.entities.html5.items():
    if len(_char) == 1:
        _HTML_NAMES.setdefault(_char, []).append(_name)
del _name, _char

_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
#: Longest spelling of one character the patterns below match (a named HTML reference behind two
#: escaped ``&amp;``, a 4-byte character URL-encoded three times); sizes the window an excerpt decodes.
_MAX_SPELLING = max(40, 11 + max(len(name) for name in html.entities.html5))


def _spellings(ch: str) -> list[str]:
    """Regex alternatives for one character of a secret, in every encoding a server may echo it."""
    cp = ord(ch)
    # Longer spellings come first: the regex takes the first alternative that fits, and a
    # shorter one ('&' of '&amp;amp;') would leave the rest of the spelling showing.
    alts: list[str] = []
    # Each encoding may have been applied up to three times (a body quoting a body quoting a form).
    # URL encoding (quote, quote_plus; %25 is an encoded '%').
    alts.append("".join(f"%(?:25){{0,2}}{b:02x}" for b in ch.encode("utf-8", "surrogatepass")))
    if ch == " ":
        alts.append(r"\+|%(?:25){0,2}2b")  # quote_plus, then possibly URL-encoded again
    # HTML character references: decimal, hex, named; the '&' itself possibly escaped again.
    amp = "&(?:amp;){0,2}"
    alts.append(f"{amp}#0{{0,6}}{cp};?")
    alts.append(f"{amp}#x0{{0,6}}{cp:x};?")
    alts.extend(f"{amp}{re.escape(name)}" for name in sorted(_HTML_NAMES.get(ch, ()), key=len, reverse=True))
    # JSON string escapes (\uXXXX, with a surrogate pair beyond the BMP; short forms); each
    # level of escaping doubles the backslashes before them (1, 3, 7).
    if cp < 0x10000:
        alts.append(rf"\\{{1,8}}u{cp:04x}")
    else:
        hi, lo = 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF)
        alts.append(rf"\\{{1,8}}u{hi:04x}\\{{1,8}}u{lo:04x}")
    if ch in _JSON_SHORT:
        alts.append(rf"\\{{1,8}}{re.escape(_JSON_SHORT[ch])}")
    alts.append(re.escape(ch))
    # What the excerpt's own normalisation turns it into (whitespace -> ' ', unprintable -> '?').
    if ch.isspace():
        alts.append(" ")
    elif not " " <= ch <= "~":
        alts.append(r"\?")
    return alts


@functools.lru_cache(maxsize=64)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    parts: list[str] = []
    for run in re.findall(r"\s+|\S", secret):
        if run.isspace():
            # A run of whitespace collapses to one space in an excerpt: match a run of any length
            # made of the spellings of any of its characters.
            spellings = dict.fromkeys(a for ch in run for a in _spellings(ch))
            parts.append("(?:" + "|".join(spellings) + ")+")
        else:
            parts.append("(?:" + "|".join(_spellings(run)) + ")")
    # Inside a lookahead, so that overlapping occurrences are all found (see _mask_spans).
    return re.compile("(?=(" + "".join(parts) + "))", re.IGNORECASE)


def _mask_spans(text: str, patterns: Iterable[re.Pattern[str]]) -> str:
    """Mask the union of every match, overlapping ones included.

    With letter case ignored, a match may start in the text just before a secret; a plain
    substitution would then skip the secret's own match and leave its tail showing.
    """
    spans = sorted(m.span(1) for p in patterns for m in p.finditer(text) if m.end(1) > m.start(1))
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    start, end = spans[0]
    for s, e in [*spans[1:], (len(text) + 1, len(text) + 1)]:
        if s <= end:
            end = max(end, e)
            continue
        out.append(text[pos:start] + "***")
        pos = end
        start, end = s, e
    out.append(text[pos:])
    return "".join(out)


# The value of a field whose name says it holds a secret, in JSON ("key": "v"), form (key=v)
# or header-like (key: v) text. Numbers, booleans and null are left readable.
_SECRET_FIELD = re.compile(
    r"""((?:\\?"|\b)[\w\-]*(?:token|secret|password|passwd|assertion|api[_-]?key)[\w\-]*(?:\\?")?\s*[:=]\s*)"""
    r"""(?!(?:-?\d+(?:\.\d+)?|true|false|null)\b)"""
    r"""("(?:[^"\\]|\\.)*"?|\\"(?:[^"\\]|\\[^"])*(?:\\")?|[^"&,\s}<\\]+)""",
    re.IGNORECASE,
)


#: Secrets up to this length are searched for in every spelling, character by character. Longer
#: ones (JWT access tokens run to kilobytes) in their whole-string encodings, plus any stretch of
#: :data:`_FRAGMENT` characters of them: a pattern per character would cost too much for them.
_PER_CHARACTER_MAX = 256
_FRAGMENT = 16


def _split(secrets: Iterable[str]) -> tuple[list[str], list[str]]:
    unique = {s for s in secrets if len(s) >= 3}
    short = sorted((s for s in unique if len(s) <= _PER_CHARACTER_MAX), key=len, reverse=True)
    return short, sorted(unique - set(short))


@functools.lru_cache(maxsize=16)
def _long_forms(secret: str) -> tuple[str, ...]:
    forms = (secret, quote_plus(secret), quote(secret, safe=""), orjson.dumps(secret).decode()[1:-1])
    return tuple(dict.fromkeys((*forms, html.escape(secret))))


@functools.lru_cache(maxsize=16)
def _fragments(secret: str) -> frozenset[str]:
    return frozenset(f[i : i + _FRAGMENT] for f in _long_forms(secret) for i in range(len(f) - _FRAGMENT + 1))


def _mask_fragments(text: str, secrets: list[str]) -> str:
    """Mask every stretch of text made of :data:`_FRAGMENT`-long pieces of a long secret."""
    if not secrets or len(text) < _FRAGMENT:
        return text
    grams = frozenset().union(*(_fragments(s) for s in secrets))
    hit = [False] * len(text)
    for i in range(len(text) - _FRAGMENT + 1):
        if text[i : i + _FRAGMENT] in grams:
            hit[i : i + _FRAGMENT] = [True] * _FRAGMENT
    if not any(hit):
        return text
    out: list[str] = []
    for i, ch in enumerate(text):
        if not hit[i]:
            out.append(ch)
        elif i == 0 or not hit[i - 1]:
            out.append("***")
    return "".join(out)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    r"""``text`` with every known secret masked as ``***``, in any encoding a server may echo it.

    A secret is found raw, URL-encoded (``quote`` and ``quote_plus``), JSON-escaped (``\u00XX``
    style and short escapes), HTML-escaped (decimal, hex and named references), each up to three
    times over, in any mix of these, and in any letter case.
    Secrets longer than 256 characters (access tokens) are found raw, URL-, JSON- or HTML-encoded
    as a whole, and any 16-character piece of them is masked too. Values of fields named like
    secrets (``access_token``, ``password``...) are masked as well. Secrets shorter than 3
    characters are not searched for (they would mask ordinary text).
    """
    short, long = _split(secrets)
    text = _mask_spans(text, (_secret_pattern(s) for s in short))
    for secret in long:
        for form in _long_forms(secret):
            text = text.replace(form, "***")
    text = _mask_fragments(text, long)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + "***", text)


# One layer of JSON string escaping per call (each backslash pair is one escape).
_JSON_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_JSON_SHORT_BACK = {v: k for k, v in _JSON_SHORT.items()}


def _json_unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        return chr(int(m.group(1), 16)) if m.group(1) else _JSON_SHORT_BACK[m.group(2)]

    out = _JSON_ESCAPE.sub(one, text)
    # Join surrogate pairs (\ud83d\ude00) into the character they spell.
    return out.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if out != text else out


_NUMERIC_REF = re.compile(r"&#(?:[xX]0*([0-9a-fA-F]{1,6})|0*([0-9]{1,7}));?")


def _html_unescape(text: str) -> str:
    # Numeric references first, by hand: html.unescape drops the ones HTML5 calls invalid
    # (control characters), and a secret may hold one.
    def one(m: re.Match[str]) -> str:
        cp = int(m.group(1), 16) if m.group(1) else int(m.group(2))
        return chr(cp) if cp <= 0x10FFFF else m.group(0)

    return html.unescape(_NUMERIC_REF.sub(one, text))


def _decodings(text: str) -> set[str]:
    """``text`` with up to three layers of HTML, URL and JSON escaping taken off, every way."""
    seen = {text}
    frontier = {text}
    for _ in range(3):
        found = {
            d
            for v in frontier
            for d in (_html_unescape(v), unquote(v), unquote_plus(v), _json_unescape(v))
            if d not in seen
        }
        if not found:
            break
        seen |= found
        frontier = found
    return seen


def _canonical(text: str) -> str:
    return re.sub(r"\s+", " ", text).casefold()


def holds_secret(text: str, secrets: Iterable[str]) -> bool:
    """Whether ``text`` holds one of ``secrets`` in any encoding :func:`scrub` knows.

    Short texts (a response field) are decoded every way instead of matched against each
    secret's pattern: building those patterns costs more than decoding a few fields.
    """
    short, long = _split(secrets)
    if any(form in text for s in long for form in _long_forms(s)):
        return True
    if len(text) > 65536:
        return any(_secret_pattern(s).search(text) for s in short)
    wanted = [_canonical(s) for s in short]
    return any(w in _canonical(d) for d in _decodings(text) for w in wanted)


def excerpt(body: bytes, secrets: Iterable[str] = (), limit: int = 160) -> str:
    """A short, printable, scrubbed excerpt of a response body for an error message.

    Scrubbing (see :func:`scrub`) happens on the text *before* it is cut to ``limit``
    characters, so a secret is never shown in part at the cut. Only the start of a large body is
    decoded; the decoded window is larger than the excerpt by the longest spelling of any secret,
    and its last such stretch is dropped, so a secret straddling the window's edge cannot show
    its first half either (long secrets are caught there by their 16-character pieces).
    """
    secrets = list(secrets)
    short, _ = _split(secrets)
    tail = _MAX_SPELLING * max((len(s) for s in short), default=0) + 16  # may hold a cut secret
    window = limit * 8 + 4 * tail
    truncated = len(body) > window
    text = body[:window].decode("utf-8", "replace")
    # Normalise first, so the scrubbed text is exactly what is shown (no collapse afterwards can
    # join the pieces of a secret back together).
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"[^\x20-\x7e]", "?", text)
    text = scrub(text, secrets)
    if truncated:
        text = text[: max(0, len(text) - tail)]
    text = text.strip()
    return text[:limit] + ("..." if len(text) > limit or truncated else "")


# --- rate-limit signals ----------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive; plain dicts here hold lower-cased names.
    return headers.get(name) or headers.get(name.lower())


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when.timestamp() - now_wall
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _reset_at(value: str, now_wall: float) -> float | None:
    try:
        reset = float(value)
    except ValueError:
        try:
            reset = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    if not math.isfinite(reset):
        return None
    # Epoch milliseconds: no epoch in seconds is that large before the year 5000.
    return max(0.0, (reset / 1000 if reset > 1e11 else reset) - now_wall)


def rate_limit_delay(headers: Mapping[str, str], now_wall: float) -> float | None:
    """Seconds the server asked us to wait, from its headers; ``None`` when none is usable.

    Reads, in order: ``Retry-After`` (seconds or HTTP-date), ``X-RateLimit-Reset`` and
    ``X-Rate-Limit-Reset`` (epoch seconds or milliseconds, or ISO 8601) and ``RateLimit-Reset``
    (delta seconds, IETF draft). One parser for token endpoints and APIs alike.
    """
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now_wall)
    if retry_after is not None:
        return retry_after
    for name in ("X-RateLimit-Reset", "X-Rate-Limit-Reset"):
        value = _header(headers, name)
        if value:
            delay = _reset_at(value, now_wall)
            if delay is not None:
                return delay
    value = _header(headers, "RateLimit-Reset")
    if value:
        try:
            delta = float(value)
        except ValueError:
            return None
        return max(0.0, delta) if math.isfinite(delta) else None
    return None
