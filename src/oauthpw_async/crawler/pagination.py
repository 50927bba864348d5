"""Pagination strategies: how to find the next page from the one just read.

Each strategy is a small class with ``start`` (the first request) and ``next`` (the
following request, or ``None`` when the partition is finished). Name one on a crawler
class by instance or by its short name (``"next_url"``, ``"cursor"``, ``"offset"``,
``"page_number"``, ``"link_header"``, ``"odata"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urljoin

import attrs

from .._paths import Path, dig
from ..errors import UsageError

__all__ = [
    "NAMED",
    "Cursor",
    "LinkHeader",
    "NextUrl",
    "ODataNextLink",
    "Offset",
    "Page",
    "PageNumber",
    "PageRequest",
    "Paginator",
    "parse_link_header",
    "resolve",
]


@attrs.frozen
class PageRequest:
    """One page to fetch: a URL (absolute, or relative to the crawler's base) and query params."""

    url: str
    params: tuple[tuple[str, str], ...] = ()

    def with_params(self, **params: object) -> PageRequest:
        """A copy with these query parameters set (replacing same-named ones)."""
        kept = [(k, v) for k, v in self.params if k not in params]
        return PageRequest(self.url, (*kept, *((k, str(v)) for k, v in params.items())))

    def key(self) -> str:
        """Identity for cycle detection: URL plus sorted params."""
        return self.url + "?" + "&".join(f"{k}={v}" for k, v in sorted(self.params))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form for checkpoints."""
        return {"url": self.url, "params": [list(p) for p in self.params]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PageRequest:
        """Inverse of :meth:`to_json`."""
        return cls(str(data["url"]), tuple((str(k), str(v)) for k, v in data.get("params", [])))


@attrs.frozen
class Page:
    """A fetched page: the request, the final URL, status, headers and parsed JSON body."""

    request: PageRequest
    url: str
    status: int
    headers: Mapping[str, str]
    data: Any
    index: int


class Paginator(Protocol):
    """Finds the first and the next page of a partition.

    A strategy may also define ``plan(page, records)`` (every remaining page, when a total
    makes them known: fetched in parallel), ``locator_path`` (where the next-page locator
    lives in the body: a partition on which it never appears is reported as possibly
    incomplete) and ``end_signalled(page)`` (the body says explicitly that this is the last
    page, e.g. ``has_more: false``).
    """

    def start(self, request: PageRequest) -> PageRequest:
        """The first request (e.g. with ``offset=0&limit=100`` added)."""
        ...

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        """The request after ``page``, or ``None`` when there is no more."""
        ...


class _NoStart:
    def start(self, request: PageRequest) -> PageRequest:
        return request


@attrs.frozen
class NextUrl(_NoStart):
    """The body holds the next page's URL, absolute or relative (joined to ``base_path`` or the page URL).

    ``NextUrl("nextRecordsUrl")`` (Salesforce), ``NextUrl("links.next")``,
    ``NextUrl("_links.next", base_path="_links.base")`` (Confluence).
    """

    path: Path = "next"
    base_path: Path | None = None
    #: A field that says "this was the last page" (Salesforce ``done``), for the completeness check.
    done_path: Path | None = None
    #: A page without the next link is the last one (Graph, Confluence and most next-link APIs leave it
    #: out there), so a one-page partition is complete. ``False``: the strategy also needs the link (or
    #: ``done_path``) on some page, and a single page without it is reported as possibly incomplete.
    missing_is_end: bool = True

    @property
    def locator_path(self) -> Path:
        """Where the next URL is read from."""
        return self.path

    def end_signalled(self, page: Page) -> bool:
        """The body says this is the last page (``done_path`` is true)."""
        return self.done_path is not None and dig(page.data, self.done_path) is True

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        """Follow the URL in the body; none (or empty) ends the partition."""
        nxt = dig(page.data, self.path)
        if not isinstance(nxt, str) or not nxt:
            return None
        base = dig(page.data, self.base_path) if self.base_path else None
        if isinstance(base, str) and base and not re.match(r"https?://", nxt):
            return PageRequest(base.rstrip("/") + "/" + nxt.lstrip("/"))
        return PageRequest(urljoin(page.url, nxt))


def ODataNextLink() -> NextUrl:
    """OData's ``@odata.nextLink`` (SharePoint, Graph, Dynamics)."""
    return NextUrl(("@odata.nextLink",))


@attrs.frozen
class Cursor(_NoStart):
    """A cursor token in the body, sent back as a query parameter.

    Ends when the cursor is missing/null or ``has_more_path`` says false.
    """

    cursor_path: Path = "next_cursor"
    param: str = "cursor"
    has_more_path: Path | None = None
    #: A page without the cursor field is the last one. ``False`` (the default: cursor APIs send a null
    #: or empty cursor on their last page): a single page without the field is reported as possibly
    #: incomplete, since the field's path may be wrong.
    missing_is_end: bool = False

    @property
    def locator_path(self) -> Path:
        """Where the cursor is read from."""
        return self.cursor_path

    def end_signalled(self, page: Page) -> bool:
        """``has_more_path`` says false."""
        return self.has_more_path is not None and dig(page.data, self.has_more_path) is False

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        """The same request with the new cursor."""
        if self.has_more_path is not None and not dig(page.data, self.has_more_path):
            return None
        cursor = dig(page.data, self.cursor_path)
        if cursor is None or cursor == "":
            return None
        return page.request.with_params(**{self.param: cursor})


@attrs.frozen
class Offset:
    """``offset``/``limit`` paging.

    With ``total_path`` it stops at the total (and steps over empty pages mid-stream);
    without, it stops at the first empty page. The offset moves by the records actually
    returned, and a server that caps the page size (100 served of 500 asked) has its cap
    adopted as the ``limit`` of the following requests, so an empty page mid-stream is
    stepped over by the server's real step, never by the larger size asked for.
    """

    offset_param: str = "offset"
    limit_param: str = "limit"
    page_size: int = 100
    total_path: Path | None = None
    start_at: int = 0

    def start(self, request: PageRequest) -> PageRequest:
        """Add ``offset=start_at&limit=page_size``."""
        return request.with_params(**{self.offset_param: self.start_at, self.limit_param: self.page_size})

    def plan(self, page: Page, records: Sequence[Any]) -> list[PageRequest] | None:
        """Every page after ``page`` when a total is known (for parallel fetching), else ``None``.

        The step is the number of records the server actually returned on this page (it may cap
        the page size below ``page_size``), so capped servers lose nothing.
        """
        total = dig(page.data, self.total_path) if self.total_path is not None else None
        if not isinstance(total, int) or isinstance(total, bool) or not records:
            return None
        step = len(records)
        offset = int(dict(page.request.params).get(self.offset_param, self.start_at)) + step
        return [
            page.request.with_params(**{self.offset_param: o, self.limit_param: step})
            for o in range(offset, total, step)
        ]

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        """Advance by the records returned; over an empty page, by the server's real page size."""
        params = dict(page.request.params)
        offset = int(params.get(self.offset_param, self.start_at))
        limit = int(params.get(self.limit_param, self.page_size))
        if records and len(records) < limit:
            limit = len(records)  # the server caps the page size: that is its real step
        total = dig(page.data, self.total_path) if self.total_path is not None else None
        if isinstance(total, (int, float)) and not isinstance(total, bool):
            nxt = offset + (len(records) or limit)
            if nxt >= total:
                return None
            return page.request.with_params(**{self.offset_param: nxt, self.limit_param: limit})
        if not records:
            return None
        return page.request.with_params(**{self.offset_param: offset + len(records), self.limit_param: limit})

    def asked(self, request: PageRequest) -> tuple[int, int]:
        """The ``(offset, limit)`` a request asks for."""
        params = dict(request.params)
        return int(params.get(self.offset_param, self.start_at)), int(params.get(self.limit_param, self.page_size))

    def back(self, request: PageRequest, rows: int = 1) -> PageRequest:
        """The same page started ``rows`` rows earlier (an overlap that shows whether rows shifted)."""
        offset, _ = self.asked(request)
        return request.with_params(**{self.offset_param: max(self.start_at, offset - rows)})

    def jumped(self, empty: PageRequest, step: int) -> list[PageRequest]:
        """The requests for the rows a step over the empty page ``empty`` jumped, now that ``step`` is known.

        Over an empty page the offset moves by the limit asked, as nothing tells a capped server
        from an honest one. When a later page shows the server's real step (100 served of 500
        asked), the empty page covered only ``step`` rows: the rest of what the larger step passed
        is read with these requests.
        """
        offset, limit = self.asked(empty)
        if step <= 0 or step >= limit:
            return []
        return [
            empty.with_params(**{self.offset_param: o, self.limit_param: step})
            for o in range(offset + step, offset + limit, step)
        ]


@attrs.frozen
class PageNumber:
    """``page=1,2,3...``; stops at ``total_pages_path`` when given, else at the first empty page."""

    page_param: str = "page"
    size_param: str | None = "per_page"
    page_size: int = 100
    first_page: int = 1
    total_pages_path: Path | None = None

    def start(self, request: PageRequest) -> PageRequest:
        """Add the first page number (and size)."""
        params: dict[str, object] = {self.page_param: self.first_page}
        if self.size_param:
            params[self.size_param] = self.page_size
        return request.with_params(**params)

    def plan(self, page: Page, records: Sequence[Any]) -> list[PageRequest] | None:
        """Every page after ``page`` when the page count is known, else ``None``."""
        pages = dig(page.data, self.total_pages_path) if self.total_pages_path is not None else None
        if not isinstance(pages, int) or isinstance(pages, bool):
            return None
        number = int(dict(page.request.params).get(self.page_param, self.first_page))
        last = self.first_page + pages - 1
        return [page.request.with_params(**{self.page_param: n}) for n in range(number + 1, last + 1)]

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        """The next page number, unless the last page was reached."""
        number = int(dict(page.request.params).get(self.page_param, self.first_page))
        pages = dig(page.data, self.total_pages_path) if self.total_pages_path is not None else None
        if isinstance(pages, int) and not isinstance(pages, bool):
            if number - self.first_page + 1 >= pages:
                return None
        elif not records:
            return None
        return page.request.with_params(**{self.page_param: number + 1})


# RFC 8288 §3: Link = #link-value; link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param )
_LINK_VALUE = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,=\s]+\s*(?:=\s*(?:\"(?:[^\"\\\\]|\\\\.)*\"|[^;,\s]*))?)*)")
_LINK_PARAM = re.compile(r';\s*([^;,=\s]+)\s*(?:=\s*(?:"((?:[^"\\\\]|\\\\.)*)"|([^;,\s]*)))?')


def parse_link_header(value: str | Sequence[str]) -> dict[str, str]:
    """RFC 8288 ``Link`` header value(s) to ``{rel: url}``, first link of each relation wins.

    Takes one header value or several (servers send ``self`` and ``next`` as separate header
    lines); each may hold comma-separated links. Relation types are compared case-insensitively
    and ``rel="next last"`` names two relations (RFC 8288 §3.3).
    """
    out: dict[str, str] = {}
    for line in [value] if isinstance(value, str) else value:
        for match in _LINK_VALUE.finditer(line):
            url, params = match.group(1).strip(), match.group(2)
            for param in _LINK_PARAM.finditer(params):
                if param.group(1).lower() != "rel":
                    continue
                rel = param.group(2) if param.group(2) is not None else (param.group(3) or "")
                for name in rel.split():
                    out.setdefault(name.lower(), url)
                break  # only the first rel parameter counts (RFC 8288 §3.3)
    return out


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:  # aiohttp's multidict keeps every header line
        return list(getall(name, []))
    value = headers.get(name) or headers.get(name.lower())
    return [value] if value else []


@attrs.frozen
class LinkHeader(_NoStart):
    """Follow ``Link: <...>; rel="next"`` (ServiceNow, GitHub, Freshservice), on any header line."""

    def next(self, page: Page, records: Sequence[Any]) -> PageRequest | None:
        """The ``next`` link, joined to the page URL when relative."""
        values = _header_values(page.headers, "Link")
        if not values:
            return None
        nxt = parse_link_header(values).get("next")
        return PageRequest(urljoin(page.url, nxt)) if nxt else None


NAMED: Mapping[str, Paginator] = {
    "next_url": NextUrl(),
    "cursor": Cursor(),
    "offset": Offset(),
    "page_number": PageNumber(),
    "link_header": LinkHeader(),
    "odata": ODataNextLink(),
}


def resolve(pagination: Paginator | str) -> Paginator:
    """A strategy from an instance or a short name."""
    if isinstance(pagination, str):
        try:
            return NAMED[pagination]
        except KeyError:
            raise UsageError(f"unknown pagination {pagination!r}; choose one of {', '.join(NAMED)}") from None
    return pagination
