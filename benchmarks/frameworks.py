"""The same password-grant, paginated source crawled by oauthpw_async and by four ingestion frameworks.

One local server per run (in its own process, over real HTTP on 127.0.0.1): the package's test
authorization server with short-lived access tokens (``--lifetime``, 2 s) and its demo API's
offset list (``--records`` records, 50 a page, each page ``--latency`` late, so a crawl spans
several token lifetimes; an expired token is answered 401). Each connector under
``benchmarks/frameworks/`` runs in its own process, each framework from its own virtualenv
(``build/fw-venvs/<name>``, created with the pinned versions below; their dependencies conflict):

  oauthpw_async   a Crawler subclass, run by ``oauthpw-async crawl``
  airbyte-cdk     an HttpStream with the CDK's Oauth2Authenticator (grant_type="password")
  singer-sdk      a RESTStream with an OAuthAuthenticator subclass and HeaderLinkPaginator
  dlt             a rest_api source with OAuth2ClientCredentials (grant_type overridden)
  scrapy          a Spider that logs in with a FormRequest (Scrapy has no auth helper)

Figures come from the server (token requests, 401s, list pages served, the crawl's span) and
from each output (unique record ids delivered, against the source's), the exit status, what
the run said about completeness, wall time, and the connector's size (non-blank lines that are
not comments or docstrings, Python plus the config file the framework needs besides the
connection). ``ideal`` token requests: 1 + span / (0.75 x lifetime), a client renewing at 25%
of the lifetime before expiry (oauthpw_async's default margin).

Prints a table and writes build/frameworks.json. Exits non-zero only when oauthpw_async itself
misses: every record, exit 0, token requests <= ideal + 1. ``--smoke``: oauthpw_async only, fewer
records, seconds long.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import tokenize
import urllib.request
from pathlib import Path
from typing import Any

from spread import first_line, load_average

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONNECTORS = HERE / "frameworks"
VENVS = ROOT / "build" / "fw-venvs"
OUT = ROOT / "build" / "frameworks.json"
MARGIN = 0.25
#: Each framework: its pinned install, its connector files, and how it is run.
FRAMEWORKS: dict[str, dict[str, Any]] = {
    "oauthpw_async": {"pins": [], "files": ["oauthpw_items.py"]},
    "airbyte-cdk": {"pins": ["airbyte-cdk==7.39.1"], "files": ["airbyte_items.py", "airbyte_catalog.json"]},
    "singer-sdk": {"pins": ["singer-sdk==0.54.9"], "files": ["singer_items.py"]},
    "dlt": {"pins": ["dlt==1.31.0"], "files": ["dlt_items.py"]},
    "scrapy": {"pins": ["scrapy==2.19.0"], "files": ["scrapy_items.py"]},
}


# --- the server process ------------------------------------------------------------------------------


async def serve(records: int, lifetime: float, latency: float) -> None:
    import asyncio

    from aiohttp import web

    from oauthpw_async.testing import AuthServerState, LocalServer
    from oauthpw_async.testing.api import DemoAPI

    state = AuthServerState(token_lifetime=lifetime)
    api = DemoAPI(projects=("alpha",), per_project=records, max_page_size=50, latency=latency)
    seen: dict[str, float] = {}

    def mark(n: int) -> None:
        now = time.monotonic()
        seen.setdefault("first", now)
        seen["last"] = now

    api.on_request = mark

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "token_requests": state.token_requests,
                "token_counts": dict(state.counts),
                "list_200": api.counts["list:200"],
                "list_401": api.counts["list:401"],
                "api_counts": dict(api.counts),
                "span": seen.get("last", 0.0) - seen.get("first", 0.0),
            }
        )

    def install(app: web.Application, auth: AuthServerState) -> None:
        api(app, auth)
        app.router.add_get("/__stats", stats)

    async with LocalServer(state, api=install) as server:
        conn = {
            "base_url": server.base_url,
            "token_url": server.token_url,
            "client_id": state.client_id,
            "client_secret": state.client_secret,
            "username": state.username,
            "password": state.password,
        }
        print(json.dumps(conn), flush=True)
        while True:
            await asyncio.sleep(3600)


# --- connector size ----------------------------------------------------------------------------------


def code_lines(path: Path) -> int:
    """Non-blank lines that are not only a comment or part of a docstring (JSON/TOML: non-blank lines)."""
    text = path.read_text()
    if path.suffix != ".py":
        return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    doc: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                doc.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - doc)


def size(name: str) -> dict[str, int]:
    files = FRAMEWORKS[name]["files"]
    py = sum(code_lines(CONNECTORS / f) for f in files if f.endswith(".py"))
    cfg = sum(code_lines(CONNECTORS / f) for f in files if not f.endswith(".py"))
    return {"python": py, "config": cfg}


# --- virtualenvs ---------------------------------------------------------------------------------------


def venv_python(name: str, python: str) -> tuple[str | None, str]:
    """The interpreter of this framework's virtualenv (made and installed on first use), or None and why."""
    if name == "oauthpw_async":
        return sys.executable, "this interpreter"
    venv = VENVS / name
    py = venv / "bin" / "python"
    pins: list[str] = FRAMEWORKS[name]["pins"]
    marker = venv / "pins.txt"
    if not (py.exists() and marker.exists() and marker.read_text() == "\n".join(pins)):
        VENVS.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([python, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True)
        if made.returncode:
            return None, f"venv failed: {made.stderr.strip()[-300:]}"
        got = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
            capture_output=True,
            text=True,
        )
        if got.returncode:
            return None, f"pip install {' '.join(pins)} failed: {got.stderr.strip()[-300:]}"
        marker.write_text("\n".join(pins))
    return str(py), " ".join(pins)


# --- one run -------------------------------------------------------------------------------------------


def command(name: str, py: str, conn: dict[str, str], work: Path) -> tuple[list[str], dict[str, str]]:
    conf = work / "conn.json"
    conf.write_text(json.dumps(conn))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name == "oauthpw_async":
        toml = work / "conn.toml"
        toml.write_text("".join(f'{k} = "{v}"\n' for k, v in conn.items() if k != "base_url"))
        env["PYTHONPATH"] = os.pathsep.join([str(CONNECTORS), os.environ.get("PYTHONPATH", "")])
        args = ["-m", "oauthpw_async", "crawl", "--config", str(toml), "--crawler", "oauthpw_items:Items"]
        args += ["--base-url", conn["base_url"], "--out", str(work / "out.jsonl")]
        return [py, *args], env
    if name == "airbyte-cdk":
        catalog = str(CONNECTORS / "airbyte_catalog.json")
        return [py, str(CONNECTORS / "airbyte_items.py"), "read", "--config", str(conf), "--catalog", catalog], env
    if name == "singer-sdk":
        return [py, str(CONNECTORS / "singer_items.py"), "--config", str(conf)], env
    if name == "dlt":
        env.update({"RUNTIME__DLTHUB_TELEMETRY": "false", "DATA_WRITER__DISABLE_COMPRESSION": "true"})
        return [py, str(CONNECTORS / "dlt_items.py"), str(conf), str(work / "dest"), str(work / "pipelines")], env
    spider = str(CONNECTORS / "scrapy_items.py")
    return [py, "-m", "scrapy", "runspider", spider, "-a", f"config={conf}", "-O", str(work / "out.jsonl")], env


def delivered(name: str, work: Path, stdout: str) -> list[int]:
    """The record ids the run delivered (its output file or its stdout messages)."""
    ids: list[int] = []
    if name in ("oauthpw_async", "scrapy"):
        out = work / "out.jsonl"
        if out.exists():
            ids = [json.loads(line)["id"] for line in out.read_text().splitlines() if line.strip()]
    elif name == "dlt":
        for f in sorted((work / "dest").rglob("items/*")):
            raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
            ids += [json.loads(line)["id"] for line in raw.decode().splitlines() if line.strip()]
    else:
        for line in stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("type") == "RECORD":
                rec = msg.get("record", {})
                ids.append((rec.get("data") or rec)["id"])  # Airbyte: record.data, Singer: record
    return ids


def said_incomplete(name: str, rc: int, stdout: str, stderr: str) -> str:
    """What the run itself reported about failure, in a few words."""
    text = stdout + stderr
    if rc == -9:
        return stderr
    if name == "scrapy":
        ignored = text.count("Ignoring response <401")
        return f"log: {ignored} 401 ignored" if ignored else "nothing"
    if name == "airbyte-cdk":
        for line in stdout.splitlines():
            if '"TRACE"' in line and '"ERROR"' in line:
                msg = json.loads(line)["trace"]["error"].get("message", "")
                return f"TRACE error: {msg[:60]}"
    if rc:
        last = [line for line in stderr.splitlines() if line.strip()]
        return f"error: {last[-1][:70]}" if last else "non-zero exit"
    return "nothing"


def stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/__stats", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def run_one(name: str, py: str, args: argparse.Namespace, records: int, latency: float) -> dict[str, Any]:
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            f"--records={records}",
            f"--lifetime={args.lifetime}",
            f"--latency={latency}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        conn = json.loads(first_line(server))
        with tempfile.TemporaryDirectory(prefix=f"fw-{name}-") as tmp:
            work = Path(tmp)
            cmd, env = command(name, py, conn, work)
            t0 = time.monotonic()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=args.timeout)
            except subprocess.TimeoutExpired as e:  # killed: what it had written still counts
                out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                proc = subprocess.CompletedProcess(cmd, -9, out, f"timed out after {args.timeout:g} s")
            wall = time.monotonic() - t0
            ids = delivered(name, work, proc.stdout)
            s = stats(conn["base_url"])
            said = said_incomplete(name, proc.returncode, proc.stdout, proc.stderr)
            if name == "oauthpw_async" and proc.returncode:
                said = f"exit {proc.returncode}: " + (proc.stderr.strip().splitlines() or [""])[-1][:60]
    finally:
        server.terminate()
        server.wait(timeout=10)
    ideal = round(1 + s["span"] / (args.lifetime * (1 - MARGIN)), 1)
    return {
        "framework": name,
        "records": len(set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "source": records,
        "token_requests": s["token_requests"],
        "ideal": ideal,
        "401s": s["list_401"],
        "pages_ok": s["list_200"],
        "exit": proc.returncode,
        "said": said,
        "wall_s": round(wall, 1),
        "span_s": round(s["span"], 1),
        **{f"lines_{k}": v for k, v in size(name).items()},
        "token_counts": s["token_counts"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["scenario", "framework", "records", "source", "token_requests", "ideal", "401s", "exit", "said", "wall_s"]
    cols += ["lines_python", "lines_config"]
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="oauthpw_async only, 1,000 records")
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--lifetime", type=float, default=2.0, help="access-token lifetime, seconds")
    p.add_argument("--latency", type=float, default=0.1, help="seconds added to every API answer")
    p.add_argument("--only", nargs="*", choices=list(FRAMEWORKS), help="run these frameworks only")
    p.add_argument("--python", default=sys.executable, help="interpreter the frameworks' venvs are made from")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path, default=OUT)
    args = p.parse_args()
    if args.serve:
        import asyncio

        asyncio.run(serve(args.records, args.lifetime, args.latency))
        return 0
    names = ["oauthpw_async"] if args.smoke else (args.only or list(FRAMEWORKS))
    if args.smoke:
        args.records = min(args.records, 1000)
    # "slow": every API answer --latency late, the token checked after that delay (the time a request
    # spends queued or in transit), so a token sent in its last --latency seconds arrives expired.
    # "fast": no added delay, ten times the records, so the crawl still spans several lifetimes.
    scenarios = {"slow": (args.records, args.latency)}
    if not args.smoke:
        scenarios["fast"] = (args.records * 10, 0.0)
    print(f"{args.lifetime:g} s tokens; load {load_average()}")
    rows: list[dict[str, Any]] = []
    for scenario, (records, latency) in scenarios.items():
        print(f"scenario {scenario}: {records} records, {latency:g} s a page", flush=True)
        for name in names:
            py, how = venv_python(name, args.python)
            if py is None:
                lines = {f"lines_{k}": v for k, v in size(name).items()}
                rows.append({"scenario": scenario, "framework": name, "said": f"not run: {how}", **lines})
                print(f"{name}: not run ({how})", flush=True)
                continue
            row = {"scenario": scenario, **run_one(name, py, args, records, latency), "installed": how}
            rows.append(row)
            print(f"{name}: {row['records']}/{row['source']} records, exit {row['exit']}", flush=True)
    print(table(rows))
    checks: dict[str, bool] = {}
    for r in rows:
        if r["framework"] != "oauthpw_async":
            continue
        sc = r["scenario"]
        checks[f"{sc}: oauthpw_async: every record"] = r.get("records") == r.get("source")
        checks[f"{sc}: oauthpw_async: exit 0"] = r.get("exit") == 0
        checks[f"{sc}: oauthpw_async: token requests <= ideal + 1"] = r.get("token_requests", 1e9) <= r["ideal"] + 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": load_average()}
    meta |= {
        "lifetime": args.lifetime,
        "scenarios": {k: {"records": n, "latency": d} for k, (n, d) in scenarios.items()},
    }
    args.json.write_text(json.dumps({"run": meta, "rows": rows, "checks": checks}, indent=2))
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'MISS'} {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
