"""Several instances from one config file's [apps.NAME] sections, with real processes: started together (each
detached), each serving its own app on its own port, listed by `status`, reloaded, stopped one by one or all at
once with nothing left running; a section that cannot start is named while the others run; `--only` with one
section runs it in the foreground."""

from __future__ import annotations

import http.client
import socket
import subprocess
from pathlib import Path

import orjson
import psutil

from tests.wsup_harness import WSUP, free_port, port_is_free, run_cli

SVC = """\
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def make(text):
    async def hello(request):
        return PlainTextResponse(text)

    return Starlette(routes=[Route("/hello", hello)])


api = make("api")
chat = make("chat")
"""


def _project(tmp_path: Path, api_port: int, chat_port: int) -> Path:
    (tmp_path / "svc.py").write_text(SVC)
    (tmp_path / "wsup.toml").write_text(
        'app = "svc:api"\naccess-log = false\ninstances = 2\n\n'
        f"[apps.api]\nport = {api_port}\n\n"
        f'[apps.chat]\napp = "svc:chat"\nname = "chat-live"\nport = {chat_port}\ninstances = 1\n'
    )
    return tmp_path


def _get(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/hello")
        return conn.getresponse().read()
    finally:
        conn.close()


def _status(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, list[dict[str, object]]]:
    result = run_cli("status", "--json", *args, env=env, cwd=cwd)
    return result.returncode, orjson.loads(result.stdout)["instances"]


def _pids(instances: list[dict[str, object]]) -> list[int]:
    pids = []
    for instance in instances:
        doc = instance["status"]
        assert isinstance(doc, dict)
        pids += [doc["supervisor"]["pid"], *(worker["pid"] for worker in doc["workers"])]
    return pids


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_two_sections_start_serve_reload_and_stop_together(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    api_port, chat_port = free_port(), free_port()
    cwd = _project(tmp_path, api_port, chat_port)
    started = run_cli("start", "--max-requests", "5000", env=wsup_env, cwd=cwd, timeout=120)
    assert started.returncode == 0, started.stderr
    lines = started.stdout.splitlines()
    assert lines[0].startswith(f"wsup: api started on http://127.0.0.1:{api_port} with 2 workers"), lines
    assert lines[1].startswith(f"wsup: chat-live started on http://127.0.0.1:{chat_port} with 1 workers"), lines
    assert (_get(api_port), _get(chat_port)) == (b"api", b"chat")

    code, instances = _status(cwd, wsup_env)
    assert code == 0 and [(i["section"], i["name"], i["running"]) for i in instances] == [
        ("api", "api", True), ("chat", "chat-live", True),
    ]  # fmt: skip
    for instance, workers in zip(instances, (2, 1), strict=True):
        doc = instance["status"]
        assert isinstance(doc, dict)
        assert len(doc["workers"]) == workers and doc["recycling"]["max_requests"] == 5000  # the command line's
    text = run_cli("status", env=wsup_env, cwd=cwd).stdout
    assert f"api        running  http://127.0.0.1:{api_port}  2/2 workers ready" in text, text
    pids = _pids(instances)

    reloaded = run_cli("reload", env=wsup_env, cwd=cwd, timeout=120)
    assert reloaded.returncode == 0, reloaded.stderr
    assert "wsup: api: reloaded 2 workers" in reloaded.stdout
    assert "wsup: chat-live: reloaded 1 workers" in reloaded.stdout
    assert reloaded.stdout.count("api: slot ") == 2 and reloaded.stdout.count("chat-live: slot 0: ") == 1
    assert (_get(api_port), _get(chat_port)) == (b"api", b"chat")
    pids += _pids(_status(cwd, wsup_env)[1])

    one = run_cli("stop", "--only", "chat", env=wsup_env, cwd=cwd, timeout=90)
    assert (one.returncode, one.stdout.strip()) == (0, "wsup: chat-live stopped"), one.stderr
    code, instances = _status(cwd, wsup_env)
    assert code == 3 and [i["running"] for i in instances] == [True, False]
    assert _get(api_port) == b"api" and port_is_free(chat_port)

    every = run_cli("stop", env=wsup_env, cwd=cwd, timeout=90)
    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines() == ["wsup: api stopped", "wsup: chat-live was not running"]
    assert all(_gone(pid) for pid in pids), [pid for pid in pids if not _gone(pid)]
    assert port_is_free(api_port) and port_is_free(chat_port)
    again = run_cli("stop", env=wsup_env, cwd=cwd)
    assert again.returncode == 3, again.stdout  # nothing of the file runs: as `wsup stop` with nothing running


def test_a_section_that_cannot_start_is_named_and_the_others_run(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    api_port, chat_port = free_port(), free_port()
    cwd = _project(tmp_path, api_port, chat_port)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", chat_port))
        holder.listen()
        started = run_cli("start", env=wsup_env, cwd=cwd, timeout=120)
    try:
        assert started.returncode == 1, (started.stdout, started.stderr)
        assert started.stdout.startswith(f"wsup: api started on http://127.0.0.1:{api_port}"), started.stdout
        errors = started.stderr.strip().splitlines()
        assert errors[0].startswith("wsup: chat-live ([apps.chat]): ") and "in use" in errors[0], errors
        assert errors[-1] == "wsup: 1 of 2 instances failed to start: chat-live", errors
        assert _get(api_port) == b"api"
    finally:
        stopped = run_cli("stop", env=wsup_env, cwd=cwd, timeout=90)
    assert stopped.returncode == 0, stopped.stderr


def test_only_one_section_runs_in_the_foreground(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    api_port, chat_port = free_port(), free_port()
    cwd = _project(tmp_path, api_port, chat_port)
    port = free_port()
    proc = subprocess.Popen(
        [*WSUP, "start", "--only", "chat", "--port", str(port)],
        env=wsup_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert first.startswith(f"wsup: chat-live serving svc:chat on http://127.0.0.1:{port}"), first
        assert _get(port) == b"chat" and port_is_free(chat_port) and port_is_free(api_port)
        stopped = run_cli("stop", env=wsup_env, cwd=cwd, timeout=90)
        assert stopped.stdout.splitlines() == ["wsup: api was not running", "wsup: chat-live stopped"]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
