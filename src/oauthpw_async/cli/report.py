"""What the command shows people: crawl progress, crawl summaries and connection checks, as text.

Formatting only: every function here takes finished figures and returns lines (or writes
them to a stream it is given). Nothing here sends a request or holds a secret: tokens
arrive already described (masked) by :meth:`oauthpw_async.grant.Token.describe`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import attrs

if TYPE_CHECKING:
    from ..check import CheckResult, CheckStep
    from ..crawler import CrawlStats
    from ..provider import TokenProvider, TokenStats
    from ..sources import StaticToken

__all__ = [
    "Progress",
    "RunSummary",
    "completeness_lines",
    "format_check",
    "format_interrupted",
    "format_nothing_to_do",
    "format_summary",
    "print_lines",
    "row",
]

#: Width of the label column in summaries and check output.
LABEL = 18


def row(label: str, value: object) -> str:
    """One ``label value`` line of a summary, aligned with the others."""
    return f"  {label:<{LABEL}} {value}"


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """A live table on a terminal (rich, the optional ``cli`` extra), a plain line every few seconds elsewhere.

    Call it with the crawl's counters after every page (it rate-limits itself); :attr:`last`
    keeps the newest counters, so an interrupted crawl can still be summarised.
    """

    def __init__(
        self, tokens: TokenProvider | StaticToken, *, live: bool, every: float = 2.0, stream: TextIO | None = None
    ) -> None:
        self.tokens = tokens
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.last: CrawlStats | None = None
        self._last = 0.0
        self._printed = ""
        self._live: Any = None
        self._started = time.monotonic()
        if live:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:  # rich is the optional 'cli' extra: fall back to plain lines
                live = False
            else:
                self._live = Live(console=Console(file=self.stream), refresh_per_second=8, transient=False)
        self.live = live

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def figures(self, stats: CrawlStats) -> dict[str, str]:
        """The figures shown, as text."""
        elapsed = max(1e-6, time.monotonic() - self._started)
        t = self.tokens.stats
        eta = stats.eta_seconds()
        expected = stats.expected_records
        return {
            "records": f"{stats.records:,}" + (f" / {expected:,}" if expected else ""),
            "pages": f"{stats.pages:,}",
            "requests/s": f"{stats.requests / elapsed:,.0f}",
            "retries": str(stats.retries),
            "401s": str(stats.unauthorized),
            "token logins/refreshes": f"{t.logins}/{t.refreshes}",
            "rate-limit pauses": str(stats.rate_limit_pauses),
            "partitions": f"{stats.partitions_done}/{stats.partitions_total}",
            "elapsed": f"{elapsed:,.1f}s",
            "ETA": f"{eta:,.0f}s" if eta is not None else "-",
        }

    def __call__(self, stats: CrawlStats) -> None:
        """Show ``stats`` (rate-limited, so it can be called on every page)."""
        self.last = stats
        now = time.monotonic()
        if self._live is not None:
            if now - self._last >= 0.1:
                self._last = now
                self._live.update(self._table(stats))
            return
        if now - self._last >= self.every:
            self._last = now
            figures = self.figures(stats)
            elapsed = figures.pop("elapsed")
            line = ", ".join(f"{k} {v}" for k, v in figures.items())
            if line != self._printed:  # the final call repeats nothing already shown
                self._printed = line
                print(f"progress: {line}, elapsed {elapsed}", file=self.stream, flush=True)

    def final(self, stats: CrawlStats) -> None:
        """Show the last state."""
        self.last = stats
        if self._live is not None:
            self._live.update(self._table(stats))
        else:
            self._last = 0.0
            self(stats)

    def _table(self, stats: CrawlStats) -> Any:
        from rich.table import Table

        table = Table(title="crawl", show_header=False, min_width=48)
        for k, v in self.figures(stats).items():
            table.add_row(k, v)
        return table


# --- crawl summary -------------------------------------------------------------------------------


@attrs.frozen
class RunSummary:
    """Everything a crawl summary shows."""

    stats: CrawlStats
    tokens: TokenStats
    elapsed: float
    #: Where records went: a file path, or ``"stdout"``.
    output: str
    #: Records in the output file now (this run and earlier ones); ``None`` for stdout.
    output_records: int | None = None
    #: Whether positions from an earlier run were picked up.
    resumed: bool = False
    #: Partitions an earlier run had already finished.
    already_done: int = 0
    #: ``"finished"``, ``"interrupted"``, ``"failed"`` or ``"output closed"``.
    outcome: str = "finished"
    #: Warnings about the data logged during the run (a partition restarted or incomplete, records moved...).
    data_warnings: tuple[str, ...] = ()
    #: How many there were (``data_warnings`` may hold only the first ones).
    data_warning_count: int = 0
    #: Incremental crawlers: the run's number when a new run began (``None``: not incremental, or resumed).
    incremental_run: int | None = None


def completeness_lines(stats: CrawlStats) -> list[str]:
    """``complete``, or each partition known to be missing records with the reasons."""
    if stats.complete:
        return [row("completeness", "complete")]
    incomplete = stats.incomplete
    unfinished = stats.partitions_total - stats.partitions_done
    head = f"INCOMPLETE ({len(incomplete)} partition(s) missing records"
    head += f", {unfinished} not finished)" if unfinished else ")"
    lines = [row("completeness", head)]
    for name, problems in sorted(incomplete.items()):
        lines.append(row("", f"{name}: {'; '.join(problems)}"))
    return lines


def format_summary(s: RunSummary) -> list[str]:
    """The summary printed after a crawl (also after an interrupted or failed one)."""
    stats, t = s.stats, s.tokens
    lines = ["summary:" if s.outcome == "finished" else f"summary ({s.outcome}):"]
    if s.incremental_run is not None:
        n = s.incremental_run
        begun = "the first (no cursor yet)" if n == 1 else f"from the cursors of run {n - 1}"
        lines.append(row("run", f"incremental run {n}, {begun}"))
    elif s.resumed:
        lines.append(row("resumed", f"yes: {s.already_done} of {stats.partitions_total} partition(s) already done"))
    lines += [
        row("records", f"{stats.records:,} this run"),
        row("pages", f"{stats.pages:,}"),
        row("API requests", f"{stats.requests:,} ({stats.requests / max(s.elapsed, 1e-6):,.0f}/s)"),
        row("token requests", f"{t.token_requests} ({t.logins} login, {t.refreshes} refresh, {t.restored} stored)"),
        row("retries", str(stats.retries)),
        row("401s", str(stats.unauthorized)),
        row("rate-limit pauses", str(stats.rate_limit_pauses)),
        row("partitions", f"{stats.partitions_done}/{stats.partitions_total} done"),
        row("time", f"{s.elapsed:.1f}s"),
    ]
    if s.output_records is None:
        lines.append(row("output", s.output))
    else:
        lines.append(row("output", f"{s.output} ({s.output_records:,} records in total)"))
    if s.outcome == "finished":
        lines += completeness_lines(stats)
    if s.data_warnings:
        shown = s.data_warnings[:_WARNINGS_SHOWN]
        total = max(s.data_warning_count, len(s.data_warnings))
        more = f" ({total - len(shown)} more above)" if total > len(shown) else ""
        lines.append(row("warnings", f"{total} about the data{more}"))
        lines += [row("", w) for w in shown]
    return lines


#: How many warnings about the data the summary repeats (all of them were logged as they happened).
_WARNINGS_SHOWN = 5


def format_nothing_to_do(
    state: str, partitions: int, output: str | None, output_records: int | None, restart: str, *, appends: bool = True
) -> list[str]:
    """What a rerun of a finished crawl says: nothing to do, and the exact command to start again.

    ``appends``: whether the restart command appends to ``output`` (rather than replacing it).
    """
    where = f"; {output} holds {output_records:,} records" if output and output_records is not None else ""
    lines = [
        f"nothing to do: all {partitions} partition(s) in {state} are finished{where}.",
        f"to crawl again from the start: {restart}",
    ]
    if output and appends:
        lines.append(f"(records are appended to {output}: move it away first for a fresh file)")
    return lines


def format_interrupted(state: str | None, command: str, why: str = "interrupted") -> str:
    """The line printed when a crawl stops early with its positions saved."""
    if state:
        return f"{why}: positions are checkpointed in {state}; run again to resume: {command}"
    return f"{why}: no --state file was given, so running again starts over: {command}"


# --- connection check ----------------------------------------------------------------------------


def _token_lines(info: dict[str, Any]) -> Iterable[str]:
    for key, value in info.items():
        if key == "extra":
            for k, v in value.items():
                yield f"  {k:<16} {v}"
        else:
            yield f"  {key:<16} {value}"


def _step_line(step: CheckStep) -> str:
    what = "login" if step.grant == "password" else "refresh"
    tries = f"{step.attempts} attempt{'s' if step.attempts != 1 else ''}"
    status = "OK" if step.ok else "FAILED"
    extra = ""
    if step.ok and step.grant == "refresh_token":
        extra = f", refresh token {step.refresh_token}"
    return f"{what} {status} at {step.url} ({step.seconds:.3f}s, {tries}{extra})"


def format_check(result: CheckResult) -> list[str]:
    """``oauthpw-async check`` as text: each token request, what came back (masked), the verdict."""
    lines = [f"logging in to {result.access_token_url} as {result.username or '(no username)'} ..."]
    for step in result.steps:
        lines.append(_step_line(step))
        if step.token is not None:
            lines += _token_lines(step.token)
    if result.refresh_skipped:
        lines.append(f"refresh not tried: {result.refresh_skipped}")
    if result.stored:
        lines.append("token store: the newest token was saved; crawls with this store start without a login")
    if result.ok:
        lines.append("connection OK")
    return lines


def print_lines(lines: Sequence[str], stream: TextIO) -> None:
    """Write ``lines`` to ``stream`` and flush (so they appear before any later error)."""
    stream.write("".join(f"{line}\n" for line in lines))
    stream.flush()
