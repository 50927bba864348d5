"""A string whose value never shows up in a repr, a str, a log line or a traceback."""

from __future__ import annotations

import hashlib
import hmac

from ._httputil import MASK as _MASK
from .errors import SecretExposureError, UsageError

__all__ = ["Secret"]


class Secret:
    """A secret string (password, client secret, token) that masks itself.

    ``repr()``, ``str()`` and f-strings show ``********``; the value is read only
    through an explicit :meth:`reveal` call. Two secrets compare equal when their
    values do, in constant time.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise UsageError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """Return the secret value. Call this only where the value is sent on the wire."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the value out of process; refuse rather than leak.
        raise SecretExposureError("Secret values cannot be pickled")

    def fingerprint(self) -> str:
        """A short, non-reversible tag for telling two secrets apart in logs."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:8]
