"""Reading a Redis URL: where it points, its credentials checked, the password from the environment.

No Redis client is imported here, so the command line can check a ``--coordinator`` URL, and
name the Redis it points at, before the fleet extra is loaded.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import ConfigError, FieldProblem

__all__ = ["PASSWORD_VARIABLE", "check_credentials", "redis_where", "with_env_password"]

#: The environment variable holding the Redis password when the Redis URL has none.
PASSWORD_VARIABLE = "OAUTHPW_REDIS_PASSWORD"

_DB_PATH = re.compile(r"(/\d*)?")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def check_credentials(url: str) -> None:
    """Refuse a Redis URL whose user name or password cannot be read back as written (not percent-encoded).

    A password holding ``@ : / ? #`` or ``%`` must be percent-encoded in a URL; unencoded, part of it
    is read as host, port, database or fragment (and a client library's error would quote it).

    Raises:
        ConfigError: the URL has credentials (an ``@``) and does not read as
            ``redis[s]://[user:password@]host:port/db``; the message quotes no part of the URL.
    """
    if "@" not in url:
        return
    problem = (
        "the Redis URL has a user name or password that is not percent-encoded (it does not read as "
        "redis://[user:password@]host:port/db): percent-encode it (urllib.parse.quote(password, safe='')), "
        f"or leave it out of the URL and put it in the environment variable {PASSWORD_VARIABLE}"
    )
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise ConfigError([FieldProblem("Redis URL", problem)]) from None
    userinfo, at, _ = parts.netloc.rpartition("@")
    if parts.scheme == "unix":
        fine = True
    else:
        fine = (
            bool(at)
            and port_ok
            and bool(parts.hostname)
            and "@" not in userinfo
            and not parts.fragment
            and _DB_PATH.fullmatch(parts.path) is not None
        )
    if not fine or _BAD_ESCAPE.search(userinfo):
        raise ConfigError([FieldProblem("Redis URL", problem)])


def with_env_password(url: str) -> str:
    """``url`` with the password of ``OAUTHPW_REDIS_PASSWORD`` (percent-encoded) if the URL has none."""
    password = os.environ.get(PASSWORD_VARIABLE, "")
    if not password:
        return url
    parts = urlsplit(url)
    if parts.password is not None or parts.scheme == "unix":
        return url
    where = parts.netloc.rpartition("@")[2]
    user = quote(parts.username or "", safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{where}"))


def redis_where(url: str) -> str:
    """``host:port/db`` of a Redis URL, without user name or password (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port: int | str = parts.port or 6379
    except ValueError:
        port = "?"
    return f"{host}:{port}{parts.path or ''}"
