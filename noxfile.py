"""Sessions users and CI rely on: tests, lint, typecheck, bench, demo."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite with a coverage report."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "--cov=oauthpw_async",
        "--cov-report=term",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy strict over the package."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Refresh-contention and crawl benchmarks; exits non-zero when a bound is missed.

    ``nox -s bench -- --smoke`` runs the seconds-long version that CI uses.
    """
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Crawl the built-in demo server end to end with a live progress display."""
    session.install("-e", ".[cli]")
    session.run("oauthpw-async", "demo", *session.posargs)
