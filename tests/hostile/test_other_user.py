"""Another local user against root's instance (defect 7): no socket reachable, no write or delete outside its own
directory through links or pre-created directories, and one-line `wsup:` errors, never a traceback."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.wsup_harness import ROOT, WSUP, Instance, free_port

pytestmark = [
    pytest.mark.skipif(os.getuid() != 0, reason="creating a throwaway user needs root"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="useradd is not installed"),
]


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    name = f"wsupt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def _python_for(user: pwd.struct_passwd) -> list[str]:
    """An interpreter the other user can run with wsup's dependencies: this one, or the system's of the same
    version with this environment's packages on its path (a Python under root's home is not readable by others)."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        command = ["env", f"PYTHONPATH={ROOT}:{site}", candidate]
        with contextlib.suppress(OSError):
            probe = subprocess.run(
                [*command, "-c", "import zmq, orjson, psutil, uvicorn"], user=user.pw_uid, group=user.pw_gid,
                extra_groups=[], capture_output=True, timeout=60, cwd="/",
            )  # fmt: skip
            if probe.returncode == 0:
                return command
    pytest.skip("no Python with wsup's dependencies is usable by another user on this machine")


def _as(user: pwd.struct_passwd, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_python_for(user), str(ROOT / "bin" / "wsup"), *args], user=user.pw_uid, group=user.pw_gid,
        extra_groups=[], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd="/",
    )  # fmt: skip


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsup: "), lines
    return lines[0]


def test_another_user_cannot_reach_or_redirect_roots_instance(
    start_wsup: Callable[..., Instance], run_dir: Path, other_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    wsup = start_wsup("app:asgi", name="rooted")
    wsup.wait_ready(1)
    run_dir.chmod(0o711)  # let the other user see the paths, to prove the sockets themselves refuse it
    env = {"PATH": os.environ["PATH"], "WSUP_RUN_DIR": str(run_dir), "HOME": "/"}
    for command in (["status", "--name", "rooted"], ["stop", "--name", "rooted"], ["reload", "--name", "rooted"]):
        assert f"run directory {run_dir}" in _one_line(_as(other_user, env, *command))
    # Its own CLI with no WSUP_RUN_DIR finds nothing of root's (and says where it looked).
    own = {"PATH": os.environ["PATH"], "HOME": "/"}
    assert "no running wsup instance" in _one_line(_as(other_user, own, "status"))
    for leaf in ("control", "stats", "bus-in", "bus-out"):
        code = (
            "import zmq,sys; s=zmq.Context().socket(zmq.DEALER); s.connect(sys.argv[1]); s.send(b'x');"
            " sys.exit(0 if s.poll(1000) else 3)"
        )
        probe = subprocess.run(
            [*_python_for(other_user), "-c", code, f"ipc://{run_dir}/rooted/{leaf}"], user=other_user.pw_uid,
            group=other_user.pw_gid, extra_groups=[], capture_output=True, timeout=30, cwd="/",
        )  # fmt: skip
        assert probe.returncode == 3, (leaf, probe.stderr)
    assert wsup.status()["totals"]["ready"] == 1

    # A directory the other user made and filled with links into root's files: root's start refuses it whole.
    trap = tmp_path / "trap"
    trap.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root's\n")
    (trap / "api").mkdir()
    (trap / "api" / "wsup.log").symlink_to(secret)
    (trap / "api" / "lock").symlink_to(secret)
    for path in (trap / "api", trap):
        os.chown(path, other_user.pw_uid, other_user.pw_gid)
    tmp_path.chmod(0o755)
    root_env = {**wsup.env, "WSUP_RUN_DIR": str(trap)}
    started = subprocess.run(
        [*WSUP, "start", "app:asgi", "--port", str(free_port()), "--name", "api", "--daemon"], env=root_env,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert f"uid {other_user.pw_uid}" in _one_line(started)
    assert secret.read_text() == "root's\n" and (trap / "api" / "lock").is_symlink()
