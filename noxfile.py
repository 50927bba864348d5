"""Sessions users and CI rely on: tests, lint, typecheck, docs, bench, bench-peers,
bench-frameworks, demo."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite with a coverage report, on two worker processes (pytest-xdist).

    Every test is independent of the others (its own servers on port 0, its own redis-server per
    worker, its own temporary files), so two workers halve the run on a 2-core machine.
    ``nox -s tests -- -n 0`` runs it in one process.
    """
    session.install("-e", ".[test,test-integrations]")
    session.run(
        "pytest",
        "-n",
        "2",
        "--cov=oauthpw_async",
        "--cov-report=term",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy strict over the package (the integrations against their libraries' own types)."""
    session.install("-e", ".[test,test-integrations]", "mypy==2.4.1")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs site with mkdocs in strict mode (a warning fails it) into build/site."""
    session.install("-e", ".[docs,fleet]")
    session.run("mkdocs", "build", "--strict", "-d", "build/site", env={"NO_MKDOCS_2_WARNING": "1"})


#: The clients compared with in benchmarks/peers.py, pinned; never runtime dependencies.
PEERS = [
    "authlib==1.9.10",
    "httpx==0.28.1",
    "httpx-auth==0.23.1",
    "aiohttp-oauth2-client==2.0.1",
    "matplotlib==3.11.2",
]


@nox.session
def bench(session: nox.Session) -> None:
    """The SDK's own benchmarks: fast path, refresh contention, 401 storm, crawl, memory (about a minute),
    the authorized session against a static-token ceiling (about a minute), incremental sync over a
    million records (about five minutes), and the fleet through a local redis-server: token requests
    of 4 processes with and without a coordinator (about two minutes) and a million-record crawl by
    1, 2 and 4 worker processes (about four minutes).

    Every script runs; non-zero exit at the end, naming the scripts that missed a bound.
    ``nox -s bench -- --smoke`` is the seconds-long version CI runs: counts and invariants only,
    no timing ratio, so a busy machine cannot fail it.
    """
    session.install("-e", ".[test]")
    # Every script runs and prints its figures even after another missed a bound; the misses are
    # listed at the end (benchmarks/all.py).
    session.run("python", "benchmarks/all.py", *session.posargs)


@nox.session(name="bench-peers")
def bench_peers(session: nox.Session) -> None:
    """oauthpw_async against Authlib, httpx-auth, aiohttp-oauth2-client and a static-token ceiling (minutes).

    Non-zero exit when oauthpw_async misses a bound. ``nox -s bench-peers -- --smoke`` checks
    oauthpw_async's counts against the ceiling's server in seconds, without the peers.
    """
    # The smoke runs oauthpw_async and the static-token ceiling only: no peer to install.
    session.install("-e", ".[test]", *([] if "--smoke" in session.posargs else PEERS))
    session.run("python", "benchmarks/peers.py", *session.posargs)


@nox.session(name="bench-frameworks")
def bench_frameworks(session: nox.Session) -> None:
    """oauthpw_async against Airbyte's Python CDK, the Singer SDK, dlt and Scrapy at token expiry (about two minutes).

    The script makes one virtualenv per framework under build/fw-venvs (their dependencies
    conflict) with the versions pinned in benchmarks/frameworks.py. Non-zero exit only when
    oauthpw_async misses a record, exits non-zero or exceeds ideal + 1 token requests.
    ``nox -s bench-frameworks -- --smoke`` runs oauthpw_async alone in seconds.
    """
    session.install("-e", ".[cli]")
    session.run("python", "benchmarks/frameworks.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Crawl the built-in demo server end to end with a live progress display."""
    session.install("-e", ".[cli]")
    session.run("oauthpw-async", "demo", *session.posargs)
