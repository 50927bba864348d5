"""The provider's state machine (oauthpw_async.lifecycle): the table is the only way between states."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oauthpw_async import lifecycle
from oauthpw_async._secret import Secret
from oauthpw_async.grant import Instant, Token
from oauthpw_async.lifecycle import NEVER, TRANSITIONS, Event, Lifecycle, LifecycleError, State


def token(name: str, *, refresh: bool = True) -> Token:
    return Token(
        access_token=Secret(name),
        authorization=f"Bearer {name}",
        token_type="Bearer",
        issued=Instant(0.0, 0.0),
        lifetime=60.0,
        lifetime_source="expires_in",
        refresh_token=Secret(f"r-{name}") if refresh else None,
    )


def test_the_docstring_shows_the_table() -> None:
    doc = inspect.getdoc(lifecycle) or ""
    shown = doc.split("<!-- table -->\n", 1)[1].split("\n<!-- end table -->", 1)[0]
    assert shown == lifecycle.table()


def test_every_state_is_reachable_and_can_close() -> None:
    reached = {target for targets in TRANSITIONS.values() for target in targets}
    assert reached == set(State)
    assert all((state, Event.CLOSE) in TRANSITIONS for state in State)


def test_an_event_the_table_does_not_allow_raises() -> None:
    life = Lifecycle()
    with pytest.raises(LifecycleError, match="expire is not allowed in state CLOSED"):
        life.expire(token("a"))
    life.open()
    assert life.state is State.EMPTY
    with pytest.raises(LifecycleError):
        life.expire(token("a"))
    assert life.state is State.EMPTY and life.token is None  # a refused event changes nothing


def test_invalidate_keeps_the_refresh_token_and_hands_out_nothing() -> None:
    life = Lifecycle()
    life.open()
    a = token("a")
    life.install(a, refresh_at=10.0, expires_at=20.0)
    assert (life.state, life.refresh_at, life.expires_at) == (State.SERVING, 10.0, 20.0)
    assert life.invalidate()
    assert (life.state, life.token, life.refresh_at, life.expires_at) == (State.HELD, a, NEVER, NEVER)
    assert not life.invalidate()  # once: the second 401 for it does nothing


def test_a_token_that_arrives_after_the_close_is_kept_but_not_served() -> None:
    life = Lifecycle()
    life.open()
    life.close()
    life.install(token("late"), refresh_at=10.0, expires_at=20.0)
    assert (life.state, life.refresh_at, life.expires_at) == (State.CLOSED, NEVER, 20.0)
    life.open()
    assert (life.state, life.refresh_at) == (State.SERVING, NEVER)  # STALE at once: served, and renewed


EVENTS = st.sampled_from(
    ["open", "close", "install", "install_no_refresh", "invalidate", "expire", "forget", "drop_refresh_token"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_random_events_never_reach_an_undefined_state(events: list[str]) -> None:
    life = Lifecycle()
    for i, name in enumerate(events):
        before = (life.state, life.token, life.refresh_at, life.expires_at)
        named = {e.value: e for e in Event}
        event = Event.INSTALL if name.startswith("install") else named.get(name)
        try:
            if name.startswith("install"):
                life.install(token(f"t{i}", refresh=name == "install"), refresh_at=float(i), expires_at=float(i + 1))
            elif name == "invalidate":
                life.invalidate()
            elif name == "expire":
                life.expire(token(f"t{i}"))
            elif name == "drop_refresh_token":
                life.drop_refresh_token(life.token)
                assert life.state is before[0]
                assert life.token is None or life.token.refresh_token is None
            else:
                getattr(life, name)()
        except LifecycleError:
            assert event is not None and (before[0], event) not in TRANSITIONS
            assert (life.state, life.token, life.refresh_at, life.expires_at) == before  # nothing changed
        # The invariants of every state.
        assert life.state in set(State)
        if life.state is State.EMPTY:
            assert life.token is None and life.refresh_at == life.expires_at == NEVER
        if life.state is State.HELD:
            assert life.token is not None and life.refresh_at == life.expires_at == NEVER
        if life.state is State.SERVING:
            assert life.token is not None and life.expires_at != NEVER
        if life.state is State.CLOSED:
            assert life.refresh_at == NEVER  # nothing is served fresh while closed
        if life.expires_at != NEVER:
            assert life.token is not None


def test_the_docs_page_shows_every_transition() -> None:
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("docs_hooks", root / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown("<!-- generated: lifecycle -->")
    assert "stateDiagram-v2" in page and lifecycle.table() in page
    for (state, event), targets in TRANSITIONS.items():
        for target in targets:
            assert f"{state.value} --> {target.value}: {event.value}" in page
    assert "<!-- generated: lifecycle -->" in (root / "docs" / "explanation" / "lifecycle.md").read_text()
