"""Test helpers: a real local authorization server (and protected API), and a clock to drive by hand."""

from __future__ import annotations

from .authserver import AuthServerState, Fault, Quirks, Reply
from .clock import FakeClock
from .memory import InMemoryEndpoint
from .server import LocalServer

__all__ = ["AuthServerState", "FakeClock", "Fault", "InMemoryEndpoint", "LocalServer", "Quirks", "Reply"]
