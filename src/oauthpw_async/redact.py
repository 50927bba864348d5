"""Redaction: what counts as a secret, and how secrets are kept out of text and out of saved state.

One home for the rules every error message, excerpt, log line, repr and saved position follows:

* :data:`SECRET_NAME`: the names (of JSON fields, form fields, query parameters, response
  fields) whose values are secrets: ``access_token``, ``client_secret``, ``password``,
  ``api_key``, ``id_token``, ``signature``...
* :data:`MIN_SECRET_LENGTH`: a known secret shorter than this is never searched for (it would
  mask ordinary text).
* :func:`scrub` / :func:`excerpt` / :func:`holds_secret`: a known secret (a token, the
  ``Authorization`` value, a password) is found raw, URL-, JSON- and HTML-encoded, base64
  (standard and URL-safe, with or without padding, at any offset inside a longer encoded text),
  hex (either case), and split across lines.
* :func:`without_credentials`: a URL or query without the parameters that carry credentials
  (:data:`CREDENTIAL_PARAMETERS`) and without any known secret in them: what a saved position
  may hold.
"""

from __future__ import annotations

import base64
import bisect
import functools
import html
import html.entities
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

import orjson

__all__ = [
    "CREDENTIAL_PARAMETERS",
    "MASK",
    "MIN_SECRET_LENGTH",
    "SECRET_NAME",
    "excerpt",
    "holds_secret",
    "is_credential_parameter",
    "is_secret_name",
    "scrub",
    "without_credentials",
]

MASK = "********"
"""What a secret prints as in a repr or a summary."""

#: Known secrets shorter than this are not searched for in text: they would mask ordinary words.
MIN_SECRET_LENGTH = 3

_NAME_WORDS = r"token|secret|passw(?:or)?d|pwd|assertion|signature|jwt|api[_-]?key|credential"
#: A name (JSON or form field, query parameter, response field) whose value is a secret.
SECRET_NAME = re.compile(_NAME_WORDS, re.IGNORECASE)

#: Query parameters that carry a credential, whatever their value (compared lower-cased, ``-`` as
#: ``_``). Parameters that page (``pageToken``, ``$skiptoken``, ``nextPageToken``, ``cursor``) are
#: not here: a saved position needs them.
CREDENTIAL_PARAMETERS: frozenset[str] = frozenset(
    {
        "access_token",
        "token",
        "oauth_token",
        "id_token",
        "refresh_token",
        "bearer",
        "api_key",
        "apikey",
        "key",
        "client_secret",
        "password",
        "passwd",
        "pwd",
        "secret",
        "auth",
        "authorization",
        "assertion",
        "client_assertion",
        "jwt",
        "session",
        "sessionid",
        "session_id",
    }
)


def is_secret_name(name: str) -> bool:
    """Whether a field named ``name`` holds a secret (see :data:`SECRET_NAME`)."""
    return SECRET_NAME.search(name) is not None


def is_credential_parameter(name: str) -> bool:
    """Whether a query parameter named ``name`` carries a credential (see :data:`CREDENTIAL_PARAMETERS`)."""
    return name.strip().lower().replace("-", "_") in CREDENTIAL_PARAMETERS


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
    r"""((?:\\?"|\b)[\w\-]*(?:""" + _NAME_WORDS + r""")[\w\-]*(?:\\?")?\s*[:=]\s*)"""
    r"""(?!(?:-?\d+(?:\.\d+)?|true|false|null)\b)"""
    r"""("(?:[^"\\]|\\.)*"?|\\"(?:[^"\\]|\\[^"])*(?:\\")?|[^"&,\s}<\\]+)""",
    re.IGNORECASE,
)


# --- base64, hex and line-split forms ----------------------------------------------------------

#: What may sit between two pieces of a secret split across lines: whitespace, or the JSON escapes
#: of line breaks and tabs.
_GAP = re.compile(r"(?:\s|\\[nrt])+")
_SPACE = re.compile(r"\s+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\s]")
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
#: Shortest encoded stretch searched for: shorter ones would match ordinary words.
_MIN_ENCODED = 4


def _b64_cores(raw: bytes) -> list[str]:
    """The base64 characters that spell ``raw`` wherever it sits in a longer encoded text.

    Base64 works on groups of 3 bytes, so ``raw`` is spelled one of three ways depending on its
    offset; of each, only the characters made of ``raw``'s bits alone are kept.
    """
    out: list[str] = []
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode("ascii")
        core = encoded[-(-8 * k // 6) : (8 * (k + len(raw))) // 6]
        if len(core) >= _MIN_ENCODED:
            out.extend((core, core.translate(str.maketrans("+/", "-_"))))
    return out


@functools.lru_cache(maxsize=64)
def _encoded_forms(secret: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(base64 cores, hex forms lower-cased, the plain spellings without gaps) of one secret."""
    raw = secret.encode("utf-8", "surrogatepass")
    cores = tuple(dict.fromkeys(_b64_cores(raw)))
    hexes = (raw.hex(),) if len(raw) * 2 >= _MIN_ENCODED else ()
    plain = (
        secret,
        orjson.dumps(secret).decode()[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        html.escape(secret),
    )
    # Each also as an excerpt shows it (unprintable characters as '?'), and both without gaps and
    # without whitespace only: a secret may hold a literal backslash-n itself.
    shown = (f for p in plain for f in (p, _UNPRINTABLE.sub("?", p)))
    joined = (f for p in shown for f in (_GAP.sub("", p), _SPACE.sub("", p)))
    return cores, hexes, tuple(dict.fromkeys(joined))


def _joined(text: str) -> tuple[str, list[int], list[int]]:
    """``text`` without gaps, with where each kept stretch starts in the view and in ``text``."""
    views: list[int] = []
    origins: list[int] = []
    parts: list[str] = []
    pos = length = 0
    for m in _GAP.finditer(text):
        views.append(length)
        origins.append(pos)
        parts.append(text[pos : m.start()])
        length += m.start() - pos
        pos = m.end()
    views.append(length)
    origins.append(pos)
    parts.append(text[pos:])
    return "".join(parts), views, origins


def _grow(text: str, start: int, end: int, alphabet: frozenset[str]) -> tuple[int, int]:
    # The whole encoded word: its first and last characters hold bits of the secret too.
    while start > 0 and text[start - 1] in alphabet:
        start -= 1
    while end < len(text) and text[end] in alphabet:
        end += 1
    return start, end


def _encoded_spans(text: str, secrets: Iterable[str]) -> list[tuple[int, int]]:
    """Where ``text`` holds a secret base64- or hex-encoded, or split by line breaks or spaces."""
    forms = [_encoded_forms(s) for s in secrets]
    if not forms:
        return []
    view, views, origins = _joined(text)
    folded = view.lower()

    def original(v: int) -> int:
        i = bisect.bisect_right(views, v) - 1
        return origins[i] + (v - views[i])

    spans: list[tuple[int, int]] = []

    def add(haystack: str, needle: str, alphabet: frozenset[str] | None) -> None:
        at = haystack.find(needle)
        while at != -1:
            start, end = original(at), original(at + len(needle) - 1) + 1
            spans.append(_grow(text, start, end, alphabet) if alphabet else (start, end))
            at = haystack.find(needle, at + 1)

    for cores, hexes, plain in forms:
        for joined in plain:
            if len(joined) >= MIN_SECRET_LENGTH:
                add(view, joined, None)
        for core in cores:
            add(view, core, _B64_CHARS)
        for form in hexes:
            add(folded, form, _HEX_CHARS)
    return spans


def _mask_ranges(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if end <= pos:
            continue
        out.append(text[pos : max(pos, start)] + ("***" if start >= pos else ""))
        pos = end
    out.append(text[pos:])
    return "".join(out)


#: Secrets up to this length are searched for in every spelling, character by character. Longer
#: ones (JWT access tokens run to kilobytes) in their whole-string encodings, plus any stretch of
#: :data:`_FRAGMENT` characters of them: a pattern per character would cost too much for them.
_PER_CHARACTER_MAX = 256
_FRAGMENT = 16


def _split(secrets: Iterable[str]) -> tuple[list[str], list[str]]:
    unique = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
    short = sorted((s for s in unique if len(s) <= _PER_CHARACTER_MAX), key=len, reverse=True)
    return short, sorted(unique - set(short))


@functools.lru_cache(maxsize=16)
def _long_forms(secret: str) -> tuple[str, ...]:
    forms = (secret, quote_plus(secret), quote(secret, safe=""), orjson.dumps(secret).decode()[1:-1])
    cores, hexes, _ = _encoded_forms(secret)
    spelled = (*cores, *hexes, *(h.upper() for h in hexes))
    return tuple(dict.fromkeys((*forms, html.escape(secret), *spelled)))


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
    as a whole, and any 16-character piece of them is masked too. Every secret is also found
    base64-encoded (standard or URL-safe alphabet, padded or not, at any offset in a longer
    encoded text: the whole encoded word is masked), hex-encoded (either case) and split across
    lines (line breaks, spaces or JSON ``\\n`` between its pieces). Values of fields named like
    secrets (:data:`SECRET_NAME`) are masked as well. Secrets shorter than
    :data:`MIN_SECRET_LENGTH` are not searched for (they would mask ordinary text).
    """
    short, long = _split(secrets)
    text = _mask_ranges(text, _encoded_spans(text, [*short, *long]))
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
    if _encoded_spans(text, [*short, *long]):
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


# --- what a saved position may hold --------------------------------------------------------------


def _keeps(name: str, value: str, secrets: Sequence[str], shortest: int) -> bool:
    # Every spelling of a secret is at least as long as the secret itself: shorter values
    # (page numbers, cursors) cannot hold one, and skip the costly search.
    if is_credential_parameter(name):
        return False
    return len(value) < shortest or not holds_secret(value, secrets)


def without_credentials(
    url: str, params: Sequence[tuple[str, str]] = (), secrets: Iterable[str] = ()
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``url`` and ``params`` as a saved position may hold them: without any credential.

    Dropped: every parameter named in :data:`CREDENTIAL_PARAMETERS` (``access_token=`` that
    Graph- and Facebook-style APIs echo into their next links), every parameter whose value holds
    one of ``secrets`` (the current token, in any encoding :func:`scrub` knows), the URL's user
    info and its fragment. Everything else keeps its order and spelling, so the position still
    works: the token travels in the ``Authorization`` header, never in the URL.
    """
    known = [s for s in secrets if len(s) >= MIN_SECRET_LENGTH]
    shortest = min((len(s) for s in known), default=1 << 62)
    kept_params = tuple((k, v) for k, v in params if _keeps(k, v, known, shortest))
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, kept_params
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, _, value = piece.partition("=")
            if _keeps(unquote_plus(name), unquote_plus(value), known, shortest):
                pieces.append(piece)
        query = "&".join(pieces)
    if netloc == parts.netloc and query == parts.query and not parts.fragment:
        return url, kept_params
    return urlunsplit((parts.scheme, netloc, parts.path, query, "")), kept_params
