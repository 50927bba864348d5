"""Token stores never go back in time, survive sharing and restarts, and distrust what they read."""

from __future__ import annotations

import logging
import os
import random
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from oauthpw_async import (
    FileTokenStore,
    MemoryTokenStore,
    PasswordGrantConfig,
    Secret,
    StoredToken,
    Token,
    TokenProvider,
    UnsafeTokenStore,
)
from oauthpw_async.grant import Instant
from oauthpw_async.testing import AuthServerState, FakeClock, InMemoryEndpoint, Quirks

URL = "https://auth.example.com/oauth/token"
WALL = 1_700_000_000.0


def entry(generation: int, *, issued: float = WALL, lifetime: float = 3600.0) -> StoredToken:
    value = f"access-{generation}"
    return StoredToken(
        Token(
            access_token=Secret(value),
            authorization=f"Bearer {value}",
            token_type="Bearer",
            issued=Instant(0.0, issued),
            lifetime=lifetime,
            lifetime_source="expires_in",
            refresh_token=Secret(f"refresh-{generation}"),
            refresh_expires_at=100.0,
            scope="read",
            extra={"instance_url": "https://x.example.com"},
        ),
        generation,
    )


def record(path: Path, key: str = "k") -> dict[str, Any]:
    data = orjson.loads(path.read_bytes())
    assert isinstance(data, dict)
    rec = data[key]
    assert isinstance(rec, dict)
    return rec


# --- ordering -------------------------------------------------------------------------------------


def test_round_trip_keeps_every_field_and_the_generation(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    assert store.load("k") is None
    assert store.save("k", entry(7))
    loaded = store.load("k")
    assert loaded is not None and loaded.generation == 7
    tok = loaded.token
    assert tok.access_token == Secret("access-7") and tok.refresh_token == Secret("refresh-7")
    assert tok.issued.wall == WALL and tok.lifetime == 3600.0 and tok.scope == "read"
    assert tok.refresh_expires_at == WALL + 100.0  # epoch seconds in the store
    assert tok.extra == {"instance_url": "https://x.example.com"}
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "make", [lambda p: MemoryTokenStore(), lambda p: FileTokenStore(p / "t.json")], ids=["memory", "file"]
)
def test_an_older_generation_never_replaces_a_newer_one(tmp_path: Path, make: Any) -> None:
    store = make(tmp_path)
    assert store.save("k", entry(5))
    assert not store.save("k", entry(4, issued=WALL + 100))  # older, even if issued later
    assert store.load("k").generation == 5
    # Equal generations (two processes renewing from one stored token): the later-issued wins.
    assert not store.save("k", entry(5, issued=WALL - 1))
    assert store.save("k", entry(5, issued=WALL + 1))
    assert store.load("k").token.issued.wall == WALL + 1
    assert store.save("other", entry(1))  # keys are independent
    assert store.load("k").generation == 5 and store.load("other").generation == 1


def test_threads_saving_out_of_order_leave_the_highest_generation(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "t.json")
    gens = list(range(1, 201))
    random.Random(1).shuffle(gens)
    chunks = [gens[i::8] for i in range(8)]

    def work(chunk: list[int]) -> None:
        for g in chunk:
            store.save("k", entry(g))

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert record(tmp_path / "t.json")["generation"] == 200


HAMMER = """
import os, sys, time
from oauthpw_async import FileTokenStore, Secret, StoredToken, Token
from oauthpw_async.grant import Instant

path, me, procs, saves, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
for _ in range(2000):  # wait for the start signal so that every process saves at the same time
    if os.path.exists(go):
        break
    time.sleep(0.005)
store = FileTokenStore(path)
for i in range(saves):
    gen = i * procs + me + 1
    value = f"access-{gen}"
    token = Token(
        access_token=Secret(value), authorization="Bearer " + value, token_type="Bearer",
        issued=Instant(0.0, 1.7e9 + gen), lifetime=3600.0, lifetime_source="expires_in",
        refresh_token=Secret(f"refresh-{gen}"),
    )
    store.save("shared", StoredToken(token, gen))
    store.save(f"own-{me}", StoredToken(token, gen))
"""


def test_processes_sharing_one_file_never_lose_the_newest_token(tmp_path: Path) -> None:
    path, go = tmp_path / "tokens.json", tmp_path / "go"
    procs, saves = 4, 60
    children = [
        subprocess.Popen([sys.executable, "-c", HAMMER, str(path), str(me), str(procs), str(saves), str(go)])
        for me in range(procs)
    ]
    go.touch()
    for child in children:
        assert child.wait(timeout=300) == 0
    data = orjson.loads(path.read_bytes())  # valid JSON, whole
    assert data["shared"]["generation"] == procs * saves
    assert data["shared"]["access_token"] == f"access-{procs * saves}"
    for me in range(procs):  # nobody's save of another key was lost either
        assert data[f"own-{me}"]["generation"] == (saves - 1) * procs + me + 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- what a load accepts --------------------------------------------------------------------------

BAD_RECORDS = {
    "negative lifetime": {"lifetime": -5},
    "zero lifetime": {"lifetime": 0},
    "lifetime over a year": {"lifetime": 400 * 86400},
    "lifetime as text": {"lifetime": "3600"},
    "access token not text": {"access_token": 12},
    "empty access token": {"access_token": ""},
    "access token with a space": {"access_token": "a b"},
    "header injection": {"authorization": "Bearer x\r\nX-Evil: 1"},
    # Hand edits whose values cannot go in an HTTP header (RFC 9110 field values).
    "authorization with VT": {"authorization": "Bearer x\x0by"},
    "authorization with SOH": {"authorization": "Bearer x\x01y"},
    "authorization with ESC": {"authorization": "Bearer x\x1b[0my"},
    "authorization with DEL": {"authorization": "Bearer x\x7f"},
    "access token with a control": {"access_token": "access\x0b3"},
    "access token not ASCII": {"access_token": "accèss-3"},
    "refresh token with a line break": {"refresh_token": "refresh\n3"},
    "issued as text": {"issued_wall": "yesterday"},
    "issued missing": {"issued_wall": None},
    "refresh token not text": {"refresh_token": 5},
    "refresh expiry as text": {"refresh_expires_wall": "later"},
    "extra a list": {"extra": []},
    "negative generation": {"generation": -1},
    "generation a bool": {"generation": True},
    "generation fractional": {"generation": 1.5},
}


@pytest.mark.parametrize("change", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_damaged_record_is_ignored_with_a_warning(tmp_path: Path, caplog: Any, change: dict[str, Any]) -> None:
    path = tmp_path / "t.json"
    store = FileTokenStore(path)
    store.save("k", entry(3))
    data = orjson.loads(path.read_bytes())
    data["k"].update(change)
    path.write_bytes(orjson.dumps(data))
    with caplog.at_level(logging.WARNING, logger="oauthpw_async.store"):
        assert store.load("k") is None
    assert "stored token is unusable" in caplog.text and str(path) in caplog.text
    assert "access-3" not in caplog.text and "refresh-3" not in caplog.text
    assert store.save("k", entry(1))  # a damaged record counts as the oldest: it is replaced


@pytest.mark.parametrize("blob", [b"", b"not json", b"[1, 2]", b'{"k": [1]}', b'{"k": "x"}', b"\xff\xfe"])
def test_a_damaged_file_is_ignored_and_replaced(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(blob)
    path.chmod(0o600)
    store = FileTokenStore(path)
    assert store.load("k") is None
    assert store.save("k", entry(1)) and store.load("k").generation == 1


def test_files_written_before_generations_load_as_generation_zero(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = FileTokenStore(path)
    store.save("k", entry(9))
    data = orjson.loads(path.read_bytes())
    del data["k"]["generation"]
    path.write_bytes(orjson.dumps(data))
    assert store.load("k").generation == 0


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    FileTokenStore(real).save("k", entry(1))
    link = tmp_path / "tokens.json"
    link.symlink_to(real)
    store = FileTokenStore(link)
    with pytest.raises(UnsafeTokenStore, match="symbolic link") as info:
        store.load("k")
    assert info.value.path == str(link) and str(link) in str(info.value)
    with pytest.raises(UnsafeTokenStore):
        store.save("k", entry(2))
    assert record(real)["generation"] == 1  # nothing written through the link


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o606, 0o644])
def test_a_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens.json"
    FileTokenStore(path).save("k", entry(1))
    path.chmod(mode)
    with pytest.raises(UnsafeTokenStore, match=f"chmod 600 {path}"):
        FileTokenStore(path).load("k")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").mkdir()
    with pytest.raises(UnsafeTokenStore, match="not a regular file"):
        FileTokenStore(tmp_path / "tokens.json").load("k")


async def _open_while_ticking(tokens: TokenProvider, fifo: Path | None = None) -> tuple[int, BaseException | None]:
    """Open ``tokens`` while another task ticks; (ticks seen, what the open raised).

    A FIFO at the store path is given a writer only if the loop stopped ticking (a blocking open
    on the loop waits for one): that unblocks a broken store so the test fails instead of hanging.
    """
    ticks = 0
    ticked = threading.Event()
    needed_writer = threading.Event()

    def writer() -> None:
        if not ticked.wait(10):  # the loop is frozen in open(): give it its writer
            needed_writer.set()
            assert fifo is not None
            with open(fifo, "wb") as w:
                w.write(b"{}")

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(100):
            await anyio.sleep(0)
            ticks += 1
        ticked.set()

    if fifo is not None:
        threading.Thread(target=writer, daemon=True).start()
    raised: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        try:
            async with tokens:
                pass
        except Exception as exc:
            raised = exc
    ticked.set()
    assert not needed_writer.is_set(), "the event loop froze opening the token store"
    return ticks, raised


@pytest.mark.anyio
async def test_a_fifo_at_the_store_path_is_refused_without_freezing_the_loop(tmp_path: Path) -> None:
    s = Setup(tmp_path / "tokens.fifo")
    os.mkfifo(s.path, 0o600)
    ticks, raised = await _open_while_ticking(s.provider(), s.path)
    assert ticks == 100  # the loop went on while the store was looked at
    assert isinstance(raised, UnsafeTokenStore) and "not a regular file" in str(raised)
    assert s.state.token_requests == 0


@pytest.mark.anyio
async def test_a_unix_socket_at_the_store_path_is_refused(tmp_path: Path) -> None:
    s = Setup(tmp_path / "tokens.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(s.path))
        listener.listen(1)
        ticks, raised = await _open_while_ticking(s.provider())
    assert ticks == 100
    assert isinstance(raised, UnsafeTokenStore) and "not a regular file" in str(raised)
    assert s.state.token_requests == 0  # refused: no login behind the admin's back


@pytest.mark.anyio
async def test_a_hand_edited_token_that_cannot_go_in_a_header_means_a_login(tmp_path: Path, caplog: Any) -> None:
    s = Setup(tmp_path / "tokens.json")
    FileTokenStore(s.path).save(s.config.credential_key, entry(4))
    data = orjson.loads(s.path.read_bytes())
    data[s.config.credential_key].update({"access_token": "tok\x1bn", "authorization": "Bearer tok\x1bn"})
    s.path.write_bytes(orjson.dumps(data))
    with caplog.at_level(logging.WARNING, logger="oauthpw_async.store"):
        async with s.provider() as tokens:
            token = await tokens.get()
    assert "\x1b" not in token.authorization and s.state.count("password", "ok") == 1
    assert "stored token is unusable" in caplog.text and "tok\x1bn" not in caplog.text


# --- the provider and its store -------------------------------------------------------------------


class Setup:
    def __init__(self, path: Path, quirks: Quirks | None = None, lifetime: float = 600.0) -> None:
        self.clock = FakeClock()
        self.state = AuthServerState(token_lifetime=lifetime, quirks=quirks, clock=self.clock.monotonic)
        self.endpoint = InMemoryEndpoint(self.state, self.clock)
        self.config = PasswordGrantConfig(
            access_token_url=URL,
            client_id=self.state.client_id,
            client_secret=self.state.client_secret,
            username=self.state.username,
            password=self.state.password,
        )
        self.path = path

    def provider(self, store: Any = None) -> TokenProvider:
        return TokenProvider(
            self.config, endpoint=self.endpoint, clock=self.clock, store=store or FileTokenStore(self.path)
        )


@pytest.mark.anyio
async def test_closing_right_after_a_login_still_writes_the_store(tmp_path: Path) -> None:
    s = Setup(tmp_path / "tokens.json")
    async with s.provider() as tokens:
        first = await tokens.get()  # no clock moves: latency 0, the save is still pending at close
    again = s.provider()
    async with again:
        assert (await again.get()).access_token == first.access_token
        assert again.stats.restored == 1 and s.state.token_requests == 1


class OutOfOrderStore(FileTokenStore):
    """The save of generation 1 is held back until generation 2's has finished (slow disk, busy pool).

    Keyed by generation, not by call order: the worker threads may start in either order.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.results: dict[int, bool] = {}
        self._second_done = threading.Event()

    def save(self, key: str, entry: StoredToken) -> bool:
        if entry.generation == 1:
            self._second_done.wait(timeout=30)
        result = super().save(key, entry)
        self.results[entry.generation] = result
        if entry.generation == 2:
            self._second_done.set()
        return result


@pytest.mark.anyio
async def test_renewals_saved_out_of_order_leave_the_newest_token(tmp_path: Path) -> None:
    s = Setup(tmp_path / "tokens.json", quirks=Quirks(rotate_refresh_tokens=True, reuse_detection=True))
    store = OutOfOrderStore(s.path)
    async with s.provider(store) as tokens:
        await tokens.get()  # generation 1: its save waits for the next one
        tokens.invalidate()
        newest = await tokens.get()  # generation 2, refreshed: the first refresh token is now used
    assert store.results == {2: True, 1: False}  # the older save found the newer one and gave way
    assert record(s.path, s.config.credential_key)["generation"] == 2
    restarted = s.provider()
    async with restarted:
        assert (await restarted.get()).access_token == newest.access_token
        restarted.invalidate()
        await restarted.get()  # presents the newest refresh token: accepted, no login
    assert s.state.count("refresh_token", "ok") == 2 and s.state.count(outcome="reuse") == 0
    assert s.state.count("password") == 1
    assert record(s.path, s.config.credential_key)["generation"] == 3


@pytest.mark.anyio
async def test_an_unsafe_store_is_refused_when_the_provider_starts(tmp_path: Path) -> None:
    s = Setup(tmp_path / "tokens.json")
    FileTokenStore(s.path).save(s.config.credential_key, entry(1))
    s.path.chmod(0o644)
    tokens = s.provider()
    with pytest.raises(UnsafeTokenStore, match="chmod 600"):
        async with tokens:
            pass
    assert s.state.token_requests == 0
    s.path.chmod(0o600)
    async with tokens:  # the same provider starts once the file is fixed
        assert tokens.stats.restored == 1


@pytest.mark.anyio
async def test_an_unreadable_store_means_a_login_not_a_crash(tmp_path: Path, caplog: Any) -> None:
    class Broken(MemoryTokenStore):
        def load(self, key: str) -> StoredToken | None:
            raise OSError("disk on fire")

    s = Setup(tmp_path / "unused.json")
    async with s.provider(Broken()) as tokens:
        await tokens.get()
    assert s.state.count("password", "ok") == 1 and "could not be read" in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("issued_ahead", "lifetime", "restored"),
    [
        (2 * 86400.0, 3600.0, False),  # issued two days from now: not trusted
        (10 * 365 * 86400.0, 3600.0, False),  # issued in ten years: not trusted
        (0.0, 20 * 365 * 86400.0, False),  # "valid for twenty years": never an immortal token
        (600.0, 3600.0, True),  # a clock step of ten minutes: trusted, but no longer than its lifetime
    ],
)
async def test_stored_times_are_checked_against_the_clock(
    tmp_path: Path, caplog: Any, issued_ahead: float, lifetime: float, restored: bool
) -> None:
    s = Setup(tmp_path / "tokens.json")
    now_wall = s.clock.wall()
    path = s.path
    FileTokenStore(path).save(s.config.credential_key, entry(4))
    data = orjson.loads(path.read_bytes())
    data[s.config.credential_key].update({"issued_wall": now_wall + issued_ahead, "lifetime": lifetime})
    path.write_bytes(orjson.dumps(data))
    with caplog.at_level(logging.WARNING):
        async with s.provider() as tokens:
            tok = await tokens.get()
            assert tokens.stats.restored == (1 if restored else 0)
            expires_at = tokens.expires_at
    if restored:  # counted from now at the latest, never from the future
        assert tok.access_token == Secret("access-4") and expires_at <= s.clock.now + lifetime
        assert s.state.token_requests == 0
    else:
        assert "ignored" in caplog.text and s.state.count("password", "ok") == 1


@pytest.mark.anyio
async def test_an_unusable_stored_token_means_one_login_and_is_replaced(tmp_path: Path) -> None:
    s = Setup(tmp_path / "tokens.json")
    path = s.path
    FileTokenStore(path).save(s.config.credential_key, entry(4))
    data = orjson.loads(path.read_bytes())
    data[s.config.credential_key]["lifetime"] = -1
    path.write_bytes(orjson.dumps(data))
    async with s.provider() as tokens:
        await tokens.get()
        assert s.state.count("password", "ok") == 1 and tokens.stats.restored == 0
    # The damaged record counts as the oldest: the new token replaces it.
    assert record(path, s.config.credential_key)["generation"] == 1
