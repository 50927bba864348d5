"""The same refresh-contention run with oauthpw_async and the clients users would pick instead.

Every library runs in its own process against a fresh local server in another process (over
real HTTP on 127.0.0.1), with the same task count, duration, token lifetime, token-endpoint
latency and, where the library lets one set it, refresh margin. Scenarios:

  a) 1-second tokens, strictly rotating refresh tokens (reuse of an old one is refused)
  b) 1-second tokens, non-rotating refresh tokens
  c) 3-second tokens, rotating
  d) 1-second tokens, rotating, each library with its own default refresh margin

Figures come from the server (token requests, invalid_grant answers, 401s) and from the
driver (successful requests, latency). Each scenario runs for several rounds; in each round
every library runs once, the order reversing from one round to the next, and oauthpw_async and
the static-token ceiling always run next to each other. ``vs_ceiling`` is a library's
successful requests over the ceiling's in the same round; the table shows medians over the
rounds and that ratio's spread.

The run fails only on oauthpw_async's own bounds in scenario a, in every round: token requests
above ideal + 1, any invalid_grant, 401 or error; and (the one timing bound) a median
vs_ceiling below 0.8. ``--smoke`` (seconds long) runs scenario a once with oauthpw_async and the
ceiling only and checks the counts, never the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from spread import first_line, load_average, load_tuple, min_max, summary

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TOKEN_LATENCY = 0.05
GRACE = 5.0
LIBRARIES = ["oauthpw_async", "authlib", "httpx-auth", "aiohttp-oauth2-client", "static token"]
#: The order of one round (reversed every other round): oauthpw_async and the ceiling side by side.
RUN_ORDER = ["oauthpw_async", "static token", "authlib", "httpx-auth", "aiohttp-oauth2-client"]
CEILING_BOUND = 0.8
SCENARIOS = {
    "a": {"lifetime": 1.0, "rotate": True, "own_margin": False},
    "b": {"lifetime": 1.0, "rotate": False, "own_margin": False},
    "c": {"lifetime": 3.0, "rotate": True, "own_margin": False},
    "d": {"lifetime": 1.0, "rotate": True, "own_margin": True},
}
#: Refresh margin used where a library lets one set it (a fraction of the lifetime).
MARGIN_FRACTION = 0.25
#: Each library's own default margin, in seconds (None: it has no margin at all).
DEFAULT_MARGINS = {
    "oauthpw_async": "25% of lifetime",
    "authlib": 60,
    "httpx-auth": 30,
    "aiohttp-oauth2-client": 30,
    "static token": None,
}


# --- the server process ------------------------------------------------------------------------------


async def serve(lifetime: float, rotate: bool) -> None:
    from bench_api import BenchAPI
    from oauthpw_async.testing import AuthServerState, LocalServer, Quirks

    state = AuthServerState(token_lifetime=lifetime, latency=TOKEN_LATENCY, quirks=Quirks(rotate_refresh_tokens=rotate))
    async with LocalServer(state, api=BenchAPI()) as server:  # GET /__stats: the server's counts
        static = state.issue_static_token()
        print(
            json.dumps(
                {
                    "base_url": server.base_url,
                    "static_token": static,
                    "client_id": state.client_id,
                    "client_secret": state.client_secret,
                    "username": state.username,
                    "password": state.password,
                }
            ),
            flush=True,
        )
        await asyncio.Event().wait()


# --- the driver processes ----------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.unauthorized = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.error_kinds: dict[str, int] = {}
        self.cut = False

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        name = type(exc).__name__
        self.error_kinds[name] = self.error_kinds.get(name, 0) + 1


async def run_tasks(tasks: int, duration: float, one_request: Any, tally: Tally) -> float:
    end = time.monotonic() + duration

    async def worker() -> None:
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                status = await one_request()
            except Exception as exc:
                tally.error(exc)
                await asyncio.sleep(0.01)  # a failing library must not starve the loop
                continue
            tally.latencies.append(time.perf_counter() - t0)
            if status == 200:
                tally.ok += 1
            elif status == 401:
                tally.unauthorized += 1

    start = time.monotonic()
    try:
        # Requests still queued GRACE seconds after the window are cancelled, not waited for.
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(tasks))), duration + GRACE)
    except TimeoutError:
        tally.cut = True
    return time.monotonic() - start


async def drive(lib: str, info: dict[str, Any], tasks: int, duration: float, margin: float | None) -> dict[str, Any]:
    url = f"{info['base_url']}/api/ping"
    token_url = f"{info['base_url']}/oauth/token"
    tally = Tally()
    limit = 100
    notes = ""
    if lib == "oauthpw_async":
        import aiohttp

        from oauthpw_async import PasswordGrantConfig, RefreshPolicy, TokenProvider

        config = PasswordGrantConfig(
            access_token_url=token_url,
            client_id=info["client_id"],
            client_secret=info["client_secret"],
            username=info["username"],
            password=info["password"],
        )
        policy = RefreshPolicy() if margin is None else RefreshPolicy(max_margin=margin, margin_fraction=1.0)
        slots = asyncio.Semaphore(limit)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session,
            TokenProvider(config, refresh=policy) as tokens,
        ):

            async def one() -> int:
                async with slots:
                    for _ in range(2):  # one retry after a 401, with the renewed token
                        token = await tokens.get()
                        async with session.get(url, headers={"Authorization": token.authorization}) as r:
                            await r.read()
                        if r.status != 401:
                            return r.status
                        tokens.invalidate(token)
                    return 401

            elapsed = await run_tasks(tasks, duration, one, tally)
    elif lib == "static token":
        import aiohttp

        headers = {"Authorization": f"Bearer {info['static_token']}"}
        slots = asyncio.Semaphore(limit)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as session:

            async def one() -> int:
                async with slots, session.get(url, headers=headers) as r:
                    await r.read()
                    return r.status

            elapsed = await run_tasks(tasks, duration, one, tally)
    elif lib == "authlib":
        import httpx
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        kwargs: dict[str, Any] = {} if margin is None else {"leeway": margin}
        async with AsyncOAuth2Client(
            info["client_id"],
            info["client_secret"],
            token_endpoint=token_url,
            token_endpoint_auth_method="client_secret_post",
            limits=httpx.Limits(max_connections=limit),
            timeout=30,
            **kwargs,
        ) as client:
            await client.fetch_token(token_url, username=info["username"], password=info["password"])

            async def one() -> int:
                r = await client.get(url)
                return r.status_code

            elapsed = await run_tasks(tasks, duration, one, tally)
    elif lib == "httpx-auth":
        import httpx
        import httpx_auth

        kwargs = {} if margin is None else {"early_expiry": margin}
        # Its client_auth=(id, secret) sends HTTP Basic without the RFC 6749 2.3.1 form-encoding,
        # which the server's secret ("+/:%") does not survive; extra keywords go in the form body.
        auth = httpx_auth.OAuth2ResourceOwnerPasswordCredentials(
            token_url,
            info["username"],
            info["password"],
            client_id=info["client_id"],
            client_secret=info["client_secret"],
            **kwargs,
        )
        async with httpx.AsyncClient(auth=auth, limits=httpx.Limits(max_connections=limit), timeout=30) as client:

            async def one() -> int:
                r = await client.get(url)
                return r.status_code

            elapsed = await run_tasks(tasks, duration, one, tally)
        notes = "token requests are synchronous (block the event loop); client credentials sent in the body"
    elif lib == "aiohttp-oauth2-client":
        import aiohttp
        from aiohttp_oauth2_client.grant.resource_owner_password_credentials import (
            ResourceOwnerPasswordCredentialsGrant,
        )
        from aiohttp_oauth2_client.middleware import OAuth2Middleware

        notes = "margin fixed at 30 s (not settable)"
        async with (
            ResourceOwnerPasswordCredentialsGrant(
                token_url=token_url,
                username=info["username"],
                password=info["password"],
                client_id=info["client_id"],
                client_secret=info["client_secret"],
            ) as grant,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit), middlewares=(OAuth2Middleware(grant),)
            ) as session,
        ):

            async def one() -> int:
                async with session.get(url) as r:
                    await r.read()
                    return r.status

            elapsed = await run_tasks(tasks, duration, one, tally)
    else:
        raise SystemExit(f"unknown library {lib}")
    lat = sorted(tally.latencies)
    if tally.cut:
        notes = "; ".join(filter(None, [notes, f"requests still queued {GRACE:g} s after the window were cancelled"]))
    return {
        "ok": tally.ok,
        "client_401": tally.unauthorized,
        "errors": tally.errors,
        "error_kinds": tally.error_kinds,
        "seconds": round(elapsed, 2),
        "rps": round(tally.ok / elapsed) if elapsed else 0,
        "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None,
        "notes": notes,
    }


# --- orchestration ----------------------------------------------------------------------------------


def one_run(lib: str, scenario: str, tasks: int, duration: float) -> dict[str, Any]:
    sc = SCENARIOS[scenario]
    lifetime = float(sc["lifetime"])  # type: ignore[arg-type]
    margin = None if sc["own_margin"] else MARGIN_FRACTION * lifetime
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(lifetime), str(int(bool(sc["rotate"])))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(first_line(server))
        args = [
            sys.executable,
            __file__,
            "--drive",
            lib,
            json.dumps(info),
            str(tasks),
            str(duration),
            "" if margin is None else str(margin),
        ]
        try:
            res = subprocess.run(args, capture_output=True, text=True, timeout=duration * 6 + 120)
        except subprocess.TimeoutExpired:
            driven: dict[str, Any] = {"ok": 0, "errors": -1, "notes": "driver timed out"}
        else:
            if res.returncode != 0:
                driven = {"ok": 0, "errors": -1, "notes": f"driver failed: {res.stderr.strip()[-300:]}"}
            else:
                driven = json.loads(res.stdout.strip().splitlines()[-1])
        with urllib.request.urlopen(f"{info['base_url']}/__stats", timeout=10) as r:
            stats = json.loads(r.read())
    finally:
        server.terminate()
        server.wait(10)
    auth = stats["auth"]
    token_requests = sum(v for k, v in auth.items() if not k.startswith("fault"))
    invalid = sum(v for k, v in auth.items() if k.endswith(":invalid_grant") or k.endswith(":reuse"))
    # The fresh interval: lifetime - margin (oauthpw_async also takes a 5% skew allowance off).
    eff_margin = margin if margin is not None else _default_margin(lib, lifetime)
    skew = 0.05 * lifetime if lib == "oauthpw_async" else 0.0
    interval = lifetime - eff_margin - skew
    ideal = round(1 + duration / interval, 1) if interval > 0 else None
    return {
        "library": lib,
        "scenario": scenario,
        "lifetime_s": lifetime,
        "margin_s": "n/a"
        if lib == "static token"
        else (round(margin, 3) if margin is not None else DEFAULT_MARGINS[lib]),
        "token_requests": 0 if lib == "static token" else token_requests,
        "ideal": "n/a" if lib == "static token" else (ideal if ideal is not None else "every request"),
        "invalid_grant": invalid,
        "server_401": stats["api"].get("ping:401", 0),
        **driven,
    }


def _default_margin(lib: str, lifetime: float) -> float:
    value = DEFAULT_MARGINS[lib]
    if isinstance(value, (int, float)):
        return float(value)
    if lib == "oauthpw_async":
        return 0.25 * lifetime * 1.1
    return 0.0


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        "scenario",
        "library",
        "margin_s",
        "token_requests",
        "ideal",
        "invalid_grant",
        "server_401",
        "ok",
        "rps",
        "vs_ceiling",
        "vs_ceiling_min_max",
        "p50_ms",
        "p99_ms",
        "errors",
    ]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))
    for r in rows:
        if r.get("notes"):
            print(f"note ({r['scenario']}, {r['library']}): {r['notes']}")


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = sorted({r["scenario"] for r in rows})
    libs = [lib for lib in LIBRARIES if any(r["library"] == lib for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, title in (
        (axes[0], "token_requests", "token requests, median of the rounds (log scale; fewer is better)"),
        (axes[1], "ok", "successful API requests, median of the rounds (more is better)"),
    ):
        shown = [lib for lib in libs if not (key == "token_requests" and lib == "static token")]
        width = 0.8 / len(shown)
        for i, lib in enumerate(shown):
            values = [
                next((r.get(key, 0) or 0 for r in rows if r["library"] == lib and r["scenario"] == s), 0)
                for s in scenarios
            ]
            xs = [j + i * width for j in range(len(scenarios))]
            ax.bar(xs, values, width, label=lib, color=COLORS[LIBRARIES.index(lib)])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))])
        ax.set_xticklabels([f"{s})\n{_describe(s)}" for s in scenarios], fontsize=8)
        ax.set_title(title, fontsize=10)
        if key == "token_requests":
            ax.set_yscale("log")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)


COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]


def _describe(s: str) -> str:
    sc = SCENARIOS[s]
    text = f"{sc['lifetime']:g}s tokens\n{'rotating' if sc['rotate'] else 'non-rotating'}"
    return text + ("\nown margins" if sc["own_margin"] else "")


def _median(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float))]
    if not nums:
        return values[0] if values else None
    m = statistics.median(nums)
    return round(m) if all(isinstance(v, int) for v in nums) else round(m, 1)


def aggregate(
    scenarios: list[str], libs: list[str], runs: dict[tuple[str, str], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One row per scenario and library: medians over the rounds, and the ratio to the ceiling."""
    rows = []
    for s in scenarios:
        ceiling = runs.get((s, "static token"), [])
        for lib in [lib for lib in LIBRARIES if lib in libs]:
            rs = runs[(s, lib)]
            ratios = [r["ok"] / c["ok"] for r, c in zip(rs, ceiling, strict=False) if c.get("ok")]
            spread = summary(ratios)
            notes = []
            for r in rs:
                if r.get("notes") and r["notes"] not in notes:
                    notes.append(r["notes"])
            row: dict[str, Any] = {"scenario": s, "library": lib, "margin_s": rs[0]["margin_s"], "rounds": len(rs)}
            for key in ("token_requests", "ideal", "invalid_grant", "server_401", "client_401", "ok", "rps"):
                row[key] = _median([r.get(key) for r in rs])
            row["vs_ceiling"] = f"{spread['median']:.3f}" if spread["n"] else "n/a"
            row["vs_ceiling_min_max"] = min_max(spread, 3)
            for key in ("p50_ms", "p99_ms", "errors"):
                row[key] = _median([r.get(key) for r in rs])
            row["notes"] = "; ".join(notes)
            row["vs_ceiling_summary"] = spread
            rows.append(row)
    return rows


def compare(
    tasks: int, duration: float, scenarios: list[str], libs: list[str], rounds: int
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every library in every scenario, ``rounds`` times, interleaved (see the module docstring)."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(s, lib): [] for s in scenarios for lib in libs}
    order = [lib for lib in RUN_ORDER if lib in libs]
    for s in scenarios:
        for r in range(rounds):
            for lib in order if r % 2 == 0 else order[::-1]:
                row = one_run(lib, s, tasks, duration)
                row["round"] = r + 1
                runs[(s, lib)].append(row)
                print(
                    f"  ran {s}) {lib}, round {r + 1}/{rounds}: {row.get('token_requests')} token requests,"
                    f" {row.get('ok')} ok",
                    flush=True,
                )
    return runs


def checks(runs: dict[tuple[str, str], list[dict[str, Any]]], smoke: bool) -> dict[str, dict[str, Any]]:
    """oauthpw_async's own bounds in scenario a (every round); the ceiling's ratio only in the full run."""
    ours = runs.get(("a", "oauthpw_async"), [])
    ceiling = runs.get(("a", "static token"), [])
    found: dict[str, dict[str, Any]] = {}
    if not ours:
        return found

    def every(pred: Any) -> bool:
        return all(pred(r) for r in ours)

    n = len(ours)
    found[f"a) oauthpw_async: token requests <= ideal + 1, all {n} rounds"] = {
        "ok": every(lambda r: isinstance(r["ideal"], (int, float)) and r["token_requests"] <= r["ideal"] + 1)
    }
    found[f"a) oauthpw_async: no invalid_grant, all {n} rounds"] = {"ok": every(lambda r: r["invalid_grant"] == 0)}
    found[f"a) oauthpw_async: no 401 (at the server, nor unretried), all {n} rounds"] = {
        "ok": every(lambda r: r["server_401"] == 0 and r.get("client_401", 1) == 0)
    }
    found[f"a) oauthpw_async: no errors and some requests ok, all {n} rounds"] = {
        "ok": every(lambda r: r.get("errors") == 0 and r.get("ok", 0) > 0)
    }
    if ceiling:
        found["a) static-token ceiling ran: requests ok, no 401, no errors"] = {
            "ok": all(r.get("ok", 0) > 0 and r["server_401"] == 0 and r.get("errors") == 0 for r in ceiling)
        }
    if ceiling and not smoke:
        ratio = summary([r["ok"] / c["ok"] for r, c in zip(ours, ceiling, strict=True) if c.get("ok")])
        found[f"a) oauthpw_async: median successful requests >= {CEILING_BOUND} of the ceiling"] = {
            "ok": ratio["n"] == len(ours) and ratio["median"] >= CEILING_BOUND,
            "timing": True,
            "figure": ratio["median"],
            "load": load_tuple(),
        }
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--smoke", action="store_true", help="seconds long: scenario a, oauthpw_async and the ceiling, counts only"
    )
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3; 1 with --smoke)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="only these scenarios")
    parser.add_argument("--serve", nargs=2, metavar=("LIFETIME", "ROTATE"), help=argparse.SUPPRESS)
    parser.add_argument("--drive", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(float(args.serve[0]), args.serve[1] == "1"))
        return 0
    if args.drive:
        lib, info, tasks, duration, margin = args.drive
        res = asyncio.run(drive(lib, json.loads(info), int(tasks), float(duration), float(margin) if margin else None))
        print(json.dumps(res))
        return 0
    load_start = load_tuple()
    print(f"load average at start: {load_average()}", flush=True)
    t0 = time.monotonic()
    if args.smoke:
        scenarios, libs = args.scenario or ["a"], ["oauthpw_async", "static token"]
        runs = compare(100, 2.0, scenarios, libs, args.rounds or 1)
    else:
        scenarios, libs = args.scenario or list(SCENARIOS), LIBRARIES
        runs = compare(1000, 5.0, scenarios, libs, args.rounds or 3)
    rows = aggregate(scenarios, libs, runs)
    print_table(rows)
    found = checks(runs, args.smoke)
    missed = []
    print("\nchecks:")
    for name, check in found.items():
        extra = ""
        if check.get("timing"):
            extra = f"  (median {check['figure']}; load average {' '.join(map(str, check['load']))})"
        print(f"  {'ok    ' if check['ok'] else 'MISSED'}  {name}{extra}")
        if not check["ok"]:
            missed.append(name)
    if args.smoke:
        print("  (--smoke: vs_ceiling is printed above but not checked)")
    print(f"load average at end: {load_average()}")
    RESULTS.mkdir(exist_ok=True)
    name = "peers-smoke" if args.smoke else "peers"
    result = {
        "smoke": args.smoke,
        "seconds": round(time.monotonic() - t0, 1),
        "load_average_start": load_start,
        "load_average_end": load_tuple(),
        "rows": rows,
        "runs": [r for rs in runs.values() for r in rs],
        "checks": found,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    saved = f"{name}.json"
    if not args.smoke:
        draw(rows, RESULTS / f"{name}.png")
        saved += f" and {name}.png"
    print(
        f"\n{len(found) - len(missed)} checks passed, {len(missed)} missed  (saved {saved}; {result['seconds']:.0f}s)"
    )
    for m in missed:
        print(f"BOUND MISSED: {m}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
