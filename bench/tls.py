"""TLS throughput (issue 15): wsup serving HTTPS against ``uvicorn --workers``, the same app, the same certificate.

Run from the repository root::

    .venv/bin/python bench/tls.py                  # 5 rounds of 10 s per server
    .venv/bin/python bench/tls.py --rounds 2 --seconds 5

A self-signed certificate (EC P-256, made with openssl) for 127.0.0.1 is written to a temporary directory; both
servers run 2 workers with it; ``wrk -t2 -c64`` keep-alive on https://127.0.0.1/hello, alternating servers each
round. Reported: requests/s per round, the median, and wsup/uvicorn. Results go to docs/BENCHMARKS.md between
``<!-- tls:start -->`` and ``<!-- tls:end -->``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reload_report import machine, now_utc
from reload_servers import REPO, Server, ServerSpec
from throughput_system import loadavg
from wrk_output import find_wrk, parse

WORKERS = 2
START, END = "<!-- tls:start -->", "<!-- tls:end -->"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return key, cert


def specs(run_dir: str, key: Path, cert: Path) -> dict[str, ServerSpec]:
    py, tls = sys.executable, ("--ssl-keyfile", str(key), "--ssl-certfile", str(cert))
    return {
        "wsup": ServerSpec(
            "wsup",
            (py, "bin/wsup", "start", "app:asgi", "-i", str(WORKERS), "--port", "{port}", "--name", "bench-reload")
            + ("--no-access-log", "--log-level", "warning", *tls),
            "supervisor.worker",
            {"WSUP_RUN_DIR": run_dir},
        ),
        "uvicorn": ServerSpec(
            "uvicorn",
            (py, "-m", "uvicorn", "app:asgi", "--workers", str(WORKERS), "--port", "{port}", "--no-access-log")
            + ("--loop", "uvloop", "--http", "httptools", "--log-level", "info", *tls),
            "spawn_main",
        ),
    }


class TlsServer(Server):
    def wait_ready(self, timeout_s: float = 60.0) -> None:
        # The base class probes plain HTTP: over TLS, wait for the workers, then for an answer over HTTPS.
        context = ssl._create_unverified_context()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if len(self.worker_pids()) == self.workers:
                try:
                    conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2, context=context)
                    conn.request("GET", "/hello")
                    if conn.getresponse().status == 200:
                        time.sleep(1.0)  # every worker done starting (uvicorn logs no per-worker readiness here)
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready over TLS within {timeout_s:g}s: {self.log_tail()}")


def measure(server: Server, wrk: str, seconds: int) -> float:
    argv = [wrk, "-t2", "-c64", f"-d{seconds}s", "--latency", server.url("/hello", "https")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    summary = parse(out)
    if summary.failed:
        raise RuntimeError(f"{server.name}: {summary.failed} failed requests over TLS")
    return summary.requests_per_s


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.tls.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    args = parser.parse_args(argv)
    wrk = find_wrk()
    rates: dict[str, list[float]] = {"wsup": [], "uvicorn": []}
    with tempfile.TemporaryDirectory(prefix="wsup-tls-", dir="/tmp") as run_dir:
        key, cert = make_certificate(Path(run_dir))
        all_specs = specs(run_dir, key, cert)
        with TlsServer(all_specs["wsup"], WORKERS, Path(run_dir)) as wsup:
            with TlsServer(all_specs["uvicorn"], WORKERS, Path(run_dir)) as uvicorn:
                wsup.wait_ready()
                uvicorn.wait_ready()
                for _ in range(args.rounds):
                    for server in (wsup, uvicorn):
                        rates[server.name].append(measure(server, wrk, args.seconds))
                        print(f"{server.name}: {rates[server.name][-1]:,.0f} req/s", file=sys.stderr)
    m = machine(REPO)
    median = {name: statistics.median(values) for name, values in rates.items()}
    ratios = [w / u for w, u in zip(rates["wsup"], rates["uvicorn"], strict=True)]
    section = "\n".join(
        [
            "## TLS throughput (issue 15)",
            "",
            f"- Run {now_utc()} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, wsup {m['wsup']};"
            f" load average at the end {loadavg()}. **A shared, loaded machine**: the ratio is indicative only.",
            f"- {WORKERS} workers each, the same self-signed EC P-256 certificate, `wrk -t2 -c64 -d{args.seconds}s`"
            f" keep-alive on `https://127.0.0.1:PORT/hello`, {args.rounds} rounds alternating the servers.",
            "",
            "| | requests/s per round | median |",
            "|---|---|---|",
            *(
                f"| **{name}** | {', '.join(f'{v:,.0f}' for v in values)} | {median[name]:,.0f} |"
                for name, values in rates.items()
            ),
            "",
            f"wsup/uvicorn per round (each pair run back to back): {', '.join(f'{r:.2f}' for r in ratios)};"
            f" median **{statistics.median(ratios):.2f}**.",
        ]
    )
    if args.no_write:
        print(section)
    else:
        write_section(REPO / "docs" / "BENCHMARKS.md", section)
        print(section)


if __name__ == "__main__":
    main()
