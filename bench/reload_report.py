"""The reload benchmark's results and their markdown section of docs/BENCHMARKS.md (between the reload markers).

Other benchmarks write other sections of the same file, so the file is re-read right before writing and only the
text between ``<!-- reload:start -->`` and ``<!-- reload:end -->`` is replaced.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reload_servers import Reload
from reload_ws import WsResult
from throughput_system import cpu_model
from wrk_output import WrkSummary

START, END = "<!-- reload:start -->", "<!-- reload:end -->"
SERVERS = ("wsup", "uvicorn", "gunicorn")
MODES = {"keep-alive": "keep-alive", "close": "`Connection: close` (new connection per request)"}
PACKAGES = ("uvicorn", "gunicorn", "uvicorn-worker", "uvloop", "httptools", "websockets", "starlette", "psutil")
SPREAD_TARGET = 1.05


@dataclass
class HttpRun:
    """One wrk run spanning ``reloads``, and a run of the same length and settings without a reload."""

    during: WrkSummary | None = None
    baseline: WrkSummary | None = None
    reloads: list[Reload] = field(default_factory=list)
    error: str | None = None


@dataclass
class ServerResult:
    name: str
    command: str
    idle_reload: Reload | None = None
    http: dict[str, HttpRun] = field(default_factory=dict)
    ws_rounds: list[WsResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class Context:
    quick: bool
    reloads: int
    ws_clients: int
    ws_rounds: int
    command: str
    wrk: str
    started: str
    machine: dict[str, str]
    versions: dict[str, str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    log_dir: str = ""


# -- machine ---------------------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    """Read-only git (``--no-optional-locks``: not even the index is refreshed)."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return ""
    return out.stdout.strip()


def machine(repo: Path) -> dict[str, str]:
    status = _git(repo, "status", "--porcelain", "--", "supervisor", "ipc", "app").splitlines()
    dirty = [line.split(maxsplit=1)[1] for line in status if len(line.split(maxsplit=1)) == 2]
    return {
        "nproc": str(os.cpu_count() or 0),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "wsup": (_git(repo, "rev-parse", "--short", "HEAD") or "unknown")
        + (f" + uncommitted changes in {', '.join(sorted(dirty))}" if dirty else ""),
    }


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- formatting ------------------------------------------------------------------------------------------------


def _num(value: float, digits: int = 2) -> str:
    if value == float("inf"):
        return "∞"
    return f"{value:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:,.0f}"


def _row(label: str, target: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, target, *cells]) + " |"


def _table(results: list[ServerResult], rows: list[tuple[str, str, list[str]]]) -> list[str]:
    header = _row("", "target", [f"**{r.name}**" for r in results])
    rule = "|" + "---|" * (len(results) + 2)
    return [header, rule, *(_row(label, target, cells) for label, target, cells in rows)]


def _cell(run: HttpRun | None, fn: Any) -> str:
    if run is None:
        return "—"
    if run.error and run.during is None:
        return f"failed: {run.error[:60]}"
    try:
        return str(fn(run))
    except (AttributeError, TypeError, ZeroDivisionError, statistics.StatisticsError):
        return "—"


def _reload_count(run: HttpRun) -> str:
    complete = [r for r in run.reloads if not r.aborted]
    aborted = [r for r in run.reloads if r.aborted]
    text = str(len(complete))
    if aborted:
        replaced = ", ".join(str(r.replaced) for r in aborted)
        text += f" (+{len(aborted)} given up by the server part-way; workers replaced: {replaced} of 4)"
    return text


def _durations(reloads: list[Reload]) -> str:
    secs = [r.seconds for r in reloads if not r.aborted]
    if not secs:
        return "—"
    if len(secs) == 1:
        return f"{secs[0]:.2f} s"
    return f"{statistics.median(secs):.2f} s ({min(secs):.2f}–{max(secs):.2f})"


def _failed(run: HttpRun) -> str:
    assert run.during is not None
    mark = "✅" if run.during.failed == 0 else "❌"
    return f"{mark} **{run.during.failed:,}**"


def _per_reload(run: HttpRun) -> str:
    assert run.during is not None
    return f"{run.during.failed / len(run.reloads):.1f}" if run.reloads else "—"


def _http_table(results: list[ServerResult], mode: str, reloads: int) -> list[str]:
    def get(fn: Any) -> list[str]:
        return [_cell(r.http.get(mode), fn) for r in results]

    rows = [
        ("reloads completed during the run", str(reloads), get(_reload_count)),
        ("**failed requests**", "0", get(_failed)),
        ("— of which socket errors / non-2xx", "", get(lambda h: h.during.errors_text())),
        ("failed requests per reload (issue 4: uvicorn 79, gunicorn 72)", "0", get(_per_reload)),
        ("requests served", "", get(lambda h: f"{h.during.requests:,}")),
        ("run length", "", get(lambda h: f"{h.during.seconds:.1f} s")),
        ("requests/s during reloads", "", get(lambda h: _num(h.during.requests_per_s, 0))),
        ("requests/s without reload", "", get(lambda h: _num(h.baseline.requests_per_s, 0))),
        ("reload duration (median, range)", "", get(lambda h: _durations(h.reloads))),
    ]
    return _table(results, rows)


def _latency_table(results: list[ServerResult]) -> list[str]:
    rows: list[tuple[str, str, list[str]]] = []
    for mode in MODES:

        def get(fn: Any, mode: str = mode) -> list[str]:
            return [_cell(r.http.get(mode), fn) for r in results]

        rows += [
            (f"{mode}: p99 without reload", "", get(lambda h: f"{h.baseline.p99_ms:.2f} ms")),
            (f"{mode}: p99 during reloads", "", get(lambda h: f"{h.during.p99_ms:.2f} ms")),
            (f"{mode}: **p99 ratio** during/without", "", get(lambda h: f"{h.during.p99_ms / h.baseline.p99_ms:.2f}×")),
            (f"{mode}: p50 without / during", "", get(lambda h: f"{h.baseline.p50_ms:.2f} / {h.during.p50_ms:.2f} ms")),
        ]
    return _table(results, rows)


def _ws_cell(result: ServerResult, fn: Any) -> str:
    """``fn`` of the server's list of WebSocket rounds (at least one)."""
    if not result.ws_rounds:
        failed = [e for e in result.errors if e.startswith("websocket")]
        return f"failed: {failed[0][:60]}" if failed else "—"
    return str(fn(result.ws_rounds))


def _each(rounds: list[WsResult], fn: Any) -> str:
    return " · ".join(str(fn(ws)) for ws in rounds)


def _ws_duration(ws: WsResult) -> str:
    if ws.reload.aborted:
        return f"given up after {ws.reload.seconds:.2f} s ({ws.reload.replaced} of 4 replaced)"
    return f"{ws.reload.seconds:.2f} s"


def _settle(ws: WsResult) -> str:
    return f"{ws.settle_s:.2f} s" if ws.settled else f"not all reconnected after {ws.settle_s:.0f} s"


def _histogram(rounds: list[WsResult]) -> str:
    total: collections.Counter[int] = collections.Counter()
    for ws in rounds:
        total.update(ws.disconnects)
    return ", ".join(f"{n}×: {clients}" for n, clients in sorted(total.items()))


def _codes(rounds: list[WsResult]) -> str:
    total: collections.Counter[str] = collections.Counter()
    for ws in rounds:
        total.update(ws.close_codes)
    return ", ".join(f"{code}: {n}" for code, n in total.most_common())


def _spreads(rounds: list[WsResult]) -> str:
    mark = "✅" if all(ws.spread <= SPREAD_TARGET for ws in rounds) else "❌"
    return f"{mark} **{_each(rounds, lambda ws: _num(ws.spread))}**"


def _exactly_once(rounds: list[WsResult]) -> str:
    good = sum(ws.exactly_once_1012 for ws in rounds)
    return f"{'✅' if good == len(rounds) else '❌'} {good} of {len(rounds)} rounds"


def _per_worker(counts: dict[int, int]) -> str:
    return "/".join(map(str, counts.values()))


def _before(ws: WsResult) -> str:
    return _per_worker(ws.before_per_worker)


def _after(ws: WsResult) -> str:
    return _per_worker(ws.per_worker)


def _status(ws: WsResult) -> str:
    if ws.status_per_worker is None:
        return "n/a"
    return "/".join(str(n) for _pid, n in sorted(ws.status_per_worker.items()))


def _ws_table(results: list[ServerResult], clients: int, rounds: int) -> list[str]:
    def get(fn: Any) -> list[str]:
        return [_ws_cell(r, fn) for r in results]

    def each(fn: Any) -> list[str]:
        return get(lambda rs: _each(rs, fn))

    rows = [
        ("clients, fresh in each round", str(clients), get(lambda rs: rs[0].clients)),
        ("rounds (one reload each)", str(rounds), get(len)),
        ("**disconnects per client**, mean per round (issue 4: uvicorn 1.32)", "1", each(_mean)),
        ("every client closed exactly once, with 1012", "every round", get(_exactly_once)),
        ("disconnects per client: histogram, all rounds", f"1×: {clients * rounds}", get(_histogram)),
        ("close codes seen, all rounds", "1012", get(_codes)),
        ("failed reconnect attempts per round", "", each(lambda ws: ws.connect_errors)),
        ("connections per worker before the reload (start order)", "", each(_before)),
        ("— max/min before the reload", "", each(lambda ws: _num(ws.spread_before))),
        ("connections per worker after (greeting pids, start order)", "", each(_after)),
        ("— as `wsup status` reports them", "", each(_status)),
        ("**max/min connections per worker after** (issue 4: uvicorn 2.69)", f"≤ {SPREAD_TARGET}", get(_spreads)),
        ("reload duration with these clients", "", each(_ws_duration)),
        ("clients still reconnecting after the reload ended", "", each(_settle)),
    ]
    return _table(results, rows)


def _mean(ws: WsResult) -> str:
    return f"{ws.mean_disconnects:.2f}"


def _duration_table(results: list[ServerResult]) -> list[str]:
    def idle(r: ServerResult) -> str:
        if r.idle_reload is None:
            return "—"
        if r.idle_reload.aborted:
            return f"given up after {r.idle_reload.seconds:.2f} s"
        return f"**{r.idle_reload.seconds:.2f} s**"

    def mode(name: str) -> list[str]:
        return [_cell(r.http.get(name), lambda h: _durations(h.reloads)) for r in results]

    wsup = next((r for r in results if r.name == "wsup" and r.idle_reload), None)

    def ratio(r: ServerResult) -> str:
        if wsup is None or wsup.idle_reload is None or r.idle_reload is None or not wsup.idle_reload.seconds:
            return "—"
        return f"{r.idle_reload.seconds / wsup.idle_reload.seconds:.2f}×"

    rows = [
        ("idle (no clients)", "", [idle(r) for r in results]),
        ("— relative to wsup", "", [ratio(r) for r in results]),
        ("under keep-alive load (median, range)", "", mode("keep-alive")),
        ("under `Connection: close` load", "", mode("close")),
        ("with the WebSocket clients", "", [_ws_cell(r, lambda rs: _each(rs, _ws_duration)) for r in results]),
    ]
    return _table(results, rows)


def _slot_details(results: list[ServerResult]) -> list[str]:
    wsup = next((r for r in results if r.name == "wsup"), None)
    if wsup is None:
        return []
    lines = []
    for number, ws in enumerate(wsup.ws_rounds, 1):
        parts = [
            f"slot {s['slot']} {s['drained']['websocket']} WS + {s['drained']['http']} HTTP in {s['seconds']} s"
            for s in ws.reload.slots
        ]
        if parts:
            lines.append(f"- round {number}: " + "; ".join(parts))
    if not lines:
        return []
    return ["", "wsup's own report of these reloads (`wsup reload --json`, slots in replacement order):", "", *lines]


def render(ctx: Context, results: list[ServerResult], commands: dict[str, str], notes: list[str]) -> str:
    lines = [
        "## Zero-downtime reload (issue 4)",
        "",
        f"Measured {ctx.started} by `{ctx.command}` in {ctx.seconds / 60:.1f} min"
        + (" (**--quick**: fewer reloads and clients; not the reference run)" if ctx.quick else "")
        + ". All three servers run the same app (`app:asgi`) with 4 workers, one after the other, on the same machine.",
        "",
        f"- Machine: {ctx.machine['nproc']} CPUs ({ctx.machine['cpu']}), Linux {ctx.machine['kernel']}; load average"
        f" before {' / '.join(map(str, ctx.load_before))}, after {' / '.join(map(str, ctx.load_after))} (1/5/15 min).",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in ctx.versions.items()) + f", {ctx.wrk}.",
        f"- wsup: {ctx.machine['wsup']}.",
        "- Servers:",
        *(f"  - {name}: `{cmd}`" for name, cmd in commands.items()),
        "- Reloads: wsup `bin/wsup reload --json` (blocks until every slot is replaced and drained); uvicorn and"
        " gunicorn: SIGHUP/HUP to the master, then wait until no old worker pid is alive and 4 new workers serve"
        " (psutil poll every 50 ms; gunicorn also waits for each new pid's `Application startup complete`). The next"
        " reload starts 0.5 s after the previous one completed.",
        "",
    ]
    for mode, title in MODES.items():
        lines += [
            f"### HTTP, {title}: {ctx.reloads} consecutive reloads under `wrk -t2 -c64`",
            "",
            *_http_table(results, mode, ctx.reloads),
            "",
        ]
    lines += [
        "### Latency: p99 during reloads against p99 without a reload",
        "",
        "Each wrk run spanning the reloads is followed by a run of the same length and settings without a reload.",
        "",
        *_latency_table(results),
        "",
        f"### WebSockets: {ctx.ws_clients} auto-reconnecting clients through one reload ({ctx.ws_rounds} rounds)",
        "",
        "Each round connects fresh clients, waits until all are connected and quiet, reloads once, and waits until"
        " all reconnected and quiet again. Values per round are separated by ·.",
        "",
        *_ws_table(results, ctx.ws_clients, ctx.ws_rounds),
        *_slot_details(results),
        "",
        "### Reload duration, 4 workers",
        "",
        "wsup: the supervisor's own figure (`seconds` of `wsup reload --json`); uvicorn, gunicorn: from the signal"
        " until all 4 workers are replaced and serving.",
        "",
        *_duration_table(results),
        "",
    ]
    errors = [f"- {r.name}: {e}" for r in results for e in r.errors]
    if errors:
        lines += ["### Errors during the run", "", *errors, ""]
    lines += ["### Notes", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace only the text between the markers; re-read right before writing (others write other sections)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = f"{START}\n{section.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        _old, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.reload.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_json(ctx: Context, results: list[ServerResult]) -> dict[str, Any]:
    def convert(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            props = ("failed", "socket_errors", "mean_disconnects", "spread", "spread_before", "exactly_once_1012")
            for prop in props:
                if hasattr(obj, prop):
                    value = getattr(obj, prop)
                    out[prop] = None if value == float("inf") else value
            return out
        if isinstance(obj, dict):
            return {str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [convert(v) for v in obj]
        return obj

    return {"context": convert(ctx), "results": [convert(r) for r in results]}
