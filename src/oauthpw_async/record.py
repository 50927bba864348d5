"""A token as it is kept outside one process: on the wall clock, as JSON, validated strictly.

A :class:`~oauthpw_async.grant.Token` in memory counts on its process's monotonic clock, which
means nothing to another process or after a restart. What a token store writes to disk and what
a coordinator shares between processes is a :class:`TokenRecord` instead: the same token with wall-clock times.
:meth:`TokenRecord.of` makes one from a token, :meth:`TokenRecord.token` puts it back on a clock,
and :meth:`TokenRecord.from_json` reads one from a JSON object that may have been damaged or
forged: anything but a record this module writes raises :class:`BadTokenRecord`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ._secret import Secret
from .clock import Clock
from .grant import Instant, Token
from .headers import header_problem

__all__ = ["MAX_STORED_LIFETIME", "BadTokenRecord", "TokenRecord"]

#: A stored token claiming a longer life than this is damaged or forged, never "immortal".
MAX_STORED_LIFETIME = 366 * 86400.0

#: What a stored access or refresh token may hold: visible ASCII, as in an HTTP header (RFC 9110).
_TOKEN_VALUE = re.compile(r"[\x21-\x7e]{1,65536}")
_REFRESH_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,65536}")


#: The fields a record keeps as the token has them (the times are the others).
_KEPT = (
    "access_token",
    "authorization",
    "token_type",
    "lifetime",
    "lifetime_source",
    "refresh_token",
    "scope",
    "extra",
)


class BadTokenRecord(ValueError):
    """A record that is not a usable token; the message names the field, never a value."""


@attrs.frozen
class TokenRecord:
    """A token with wall-clock times: what a token store or a coordinator keeps between processes.

    Neither the tokens nor the ``Authorization`` value show in the repr.
    """

    token_type: str
    #: Epoch seconds of when the request that produced the token was sent.
    issued_wall: float
    #: Lifetime in seconds, from :attr:`issued_wall`.
    lifetime: float
    #: Where the lifetime came from (see :attr:`Token.lifetime_source`).
    lifetime_source: str
    access_token: Secret = attrs.field(repr=False)
    #: Value for the ``Authorization`` header (it holds the access token).
    authorization: str = attrs.field(repr=False)
    refresh_token: Secret | None = attrs.field(default=None, repr=False)
    #: Epoch seconds the refresh token stops being valid, when the server said so.
    refresh_expires_wall: float | None = None
    scope: str | None = None
    #: Other response fields of the token (see :attr:`Token.extra`).
    extra: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    @classmethod
    def of(cls, token: Token) -> TokenRecord:
        """The record of ``token``: its refresh expiry moved from its monotonic clock to the wall clock.

        A token whose ``issued.monotonic`` is NaN counts as on the wall clock already (its
        refresh expiry is taken as epoch seconds).
        """
        rexp = token.refresh_expires_at
        if rexp is not None and not math.isnan(token.issued.monotonic):
            rexp = token.issued.wall + (rexp - token.issued.monotonic)
        kept = {name: getattr(token, name) for name in _KEPT}
        return cls(issued_wall=token.issued.wall, refresh_expires_wall=rexp, **kept)

    def token(self, clock: Clock | None = None) -> Token:
        """The token on ``clock``'s monotonic time, as if issued and expiring at the same wall-clock times.

        This is the one place a token moves between clocks. Without a clock, the token is on
        the wall clock's time line: its monotonic times are epoch seconds (for showing the
        record, not for counting down on a clock).
        """
        now_mono, now_wall = (0.0, 0.0) if clock is None else (clock.monotonic(), clock.wall())
        rexp = self.refresh_expires_wall
        issued = Instant(now_mono - (now_wall - self.issued_wall), self.issued_wall)
        kept = {name: getattr(self, name) for name in _KEPT}
        return Token(issued=issued, refresh_expires_at=None if rexp is None else now_mono + (rexp - now_wall), **kept)

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON object (secrets revealed: it is written only where tokens are kept)."""
        return {
            "access_token": self.access_token.reveal(),
            "authorization": self.authorization,
            "token_type": self.token_type,
            "issued_wall": self.issued_wall,
            "lifetime": self.lifetime,
            "lifetime_source": self.lifetime_source,
            "refresh_token": self.refresh_token.reveal() if self.refresh_token else None,
            "refresh_expires_wall": self.refresh_expires_wall,
            "scope": self.scope,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, rec: object) -> TokenRecord:
        """Validate a JSON object strictly: a damaged or forged record must not yield a token.

        Fields other than those :meth:`as_json` writes are ignored.

        Raises:
            BadTokenRecord: ``rec`` is not an object; a field is missing, of another type, not a
                finite number, a lifetime out of range, or a value that cannot go into an HTTP header.
        """
        if not isinstance(rec, Mapping):
            raise BadTokenRecord("the record is not a JSON object")
        lifetime = _number(rec, "lifetime")
        if not 0 < lifetime <= MAX_STORED_LIFETIME:
            raise BadTokenRecord(f"lifetime is not between 0 and {MAX_STORED_LIFETIME:.0f} seconds")
        rexp = rec.get("refresh_expires_wall")
        extra = rec.get("extra", {})
        if extra is None:
            extra = {}
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            raise BadTokenRecord("extra is not a JSON object")
        return cls(
            access_token=_secret(rec, "access_token"),
            authorization=_text(rec, "authorization", header=True),
            token_type=_text(rec, "token_type"),
            issued_wall=_number(rec, "issued_wall"),
            lifetime=lifetime,
            lifetime_source=_optional_text(rec, "lifetime_source") or "default",
            refresh_token=None if rec.get("refresh_token") is None else _refresh_secret(rec),
            refresh_expires_wall=None if rexp is None else _number(rec, "refresh_expires_wall"),
            scope=_optional_text(rec, "scope"),
            extra=dict(extra),
        )


def _number(rec: Mapping[str, Any], field: str) -> float:
    value = rec.get(field)
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            pass
        else:
            if math.isfinite(number):
                return number
    raise BadTokenRecord(f"{field} is not a finite number")


def _text(rec: Mapping[str, Any], field: str, *, header: bool = False) -> str:
    value = rec.get(field)
    if not isinstance(value, str) or not value or (header and header_problem("Authorization", value)):
        raise BadTokenRecord(f"{field} is not a valid string" + (" for an HTTP header" if header else ""))
    return value


def _optional_text(rec: Mapping[str, Any], field: str) -> str | None:
    value = rec.get(field)
    if value is not None and not isinstance(value, str):
        raise BadTokenRecord(f"{field} is not a valid string")
    return value


def _refresh_secret(rec: Mapping[str, Any]) -> Secret:
    # A refresh token goes back in a form body (percent-encoded), never in a header: any text the
    # server issued will do (spaces, non-ASCII), but not control characters (a line break is an edit).
    value = rec.get("refresh_token")
    if not isinstance(value, str) or not _REFRESH_VALUE.fullmatch(value):
        raise BadTokenRecord("refresh_token is not a valid token (text without control characters)")
    return Secret(value)


def _secret(rec: Mapping[str, Any], field: str) -> Secret:
    value = rec.get(field)
    if not isinstance(value, str) or not _TOKEN_VALUE.fullmatch(value):
        raise BadTokenRecord(f"{field} is not a valid token (visible ASCII characters only)")
    return Secret(value)
