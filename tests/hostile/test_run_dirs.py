"""Run directories that cannot be turned against their user (ipc.run_dirs, ipc.endpoints, ipc.locator): planted
symbolic links and foreign directories (defects 1 and 2), another run directory or a deleted one (defect 6 and
`status` from another environment). Root-only cases (chown to another uid) are skipped for other users."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ipc.errors import ConfigError
from ipc.run_dirs import default_root, open_root
from tests.wsup_harness import Instance, free_port, run_cli, wait_until

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="handing a directory to another uid needs root")


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsup: "), lines
    return lines[0]


def test_a_symlinked_run_root_is_refused_and_its_target_untouched(wsup_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "precious"
    (target / "B").mkdir(parents=True)
    (target / "B" / "keep").write_text("data")
    target.chmod(0o755)
    link = Path(wsup_env["WSUP_RUN_DIR"]) / "x"
    link.symlink_to(target)
    env = {**wsup_env, "WSUP_RUN_DIR": str(link)}
    result = run_cli("start", "app:asgi", "--port", str(free_port()), "--name", "B", "--daemon", env=env)
    assert "symbolic link" in _one_line_error(result, 2)
    assert _one_line_error(run_cli("stop", "--name", "B", env=env), 2)
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert (target / "B" / "keep").read_text() == "data"


@needs_root
def test_a_foreign_run_root_with_a_planted_log_link_is_refused_before_any_write(
    wsup_env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("untouched\n")
    foreign = Path(wsup_env["WSUP_RUN_DIR"]) / "foreign"
    (foreign / "api").mkdir(parents=True)
    for planted in (foreign / "api.log", foreign / "api" / "wsup.log"):
        planted.symlink_to(secret)
    for path in (foreign / "api", foreign):
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    env = {**wsup_env, "WSUP_RUN_DIR": str(foreign)}
    result = run_cli("start", "app:asgi", "--port", str(free_port()), "--name", "api", "--daemon", env=env)
    assert f"belongs to uid {NOBODY}" in _one_line_error(result, 2)
    assert secret.read_text() == "untouched\n"


def test_stop_removes_only_what_wsup_created(start_wsup: Callable[..., Instance], run_dir: Path) -> None:
    wsup = start_wsup("app:asgi", name="own")
    wsup.wait_ready(1)
    mine = run_dir / "own" / "notes.txt"
    mine.write_text("the user's")
    assert wsup.cli("stop", "--name", "own").returncode == 0
    assert mine.read_text() == "the user's"
    assert sorted(p.name for p in (run_dir / "own").iterdir()) == ["notes.txt"]


def test_status_finds_an_instance_from_another_environment(start_wsup: Callable[..., Instance], run_dir: Path) -> None:
    name = f"elsewhere-{run_dir.name}"  # unique on this machine: without WSUP_RUN_DIR every root of ours is searched
    wsup = start_wsup("app:asgi", name=name)
    wsup.wait_ready(1)
    other = run_dir / "xdg"
    other.mkdir(mode=0o700)
    env = {key: value for key, value in wsup.env.items() if key != "WSUP_RUN_DIR"} | {"XDG_RUNTIME_DIR": str(other)}
    result = run_cli("status", "--name", name, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert f'"port": {wsup.port}' in result.stdout
    # A run root that is named explicitly is the only one searched: the error says where it looked.
    named = run_cli("status", "--name", name, env={**wsup.env, "WSUP_RUN_DIR": str(other)})
    assert f"in {other} (the run directory; WSUP_RUN_DIR chooses another)" in _one_line_error(named, 3)


def test_a_deleted_run_directory_still_reaches_the_instance_and_keeps_its_name(
    start_wsup: Callable[..., Instance], run_dir: Path
) -> None:
    wsup = start_wsup("app:asgi", "-i", "2", name="gone")
    supervisor_pid = wsup.wait_ready(2)["supervisor"]["pid"]
    shutil.rmtree(run_dir / "gone")
    error = _one_line_error(wsup.cli("status", "--name", "gone"), 3)
    assert f"supervisor pid {supervisor_pid}" in error and str(run_dir / "gone") in error
    second = run_cli("start", "app:asgi", "--port", str(free_port()), "--name", "gone", "--daemon", env=wsup.env)
    assert f"already running (supervisor pid {supervisor_pid}" in _one_line_error(second, 1)
    reload = wsup.cli("reload", "--name", "gone")
    assert reload.returncode == 0 and "SIGHUP" in reload.stdout, reload.stderr
    stop = wsup.cli("stop", "--name", "gone")
    assert stop.returncode == 0, stop.stderr
    wait_until(lambda: wsup.proc.poll() is not None, 30, what="the supervisor to exit")


def test_default_run_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WSUP_RUN_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    if os.getuid() == 0:
        assert default_root() == Path("/run/wsup")  # never a guessable name in a world-writable directory
    else:
        assert default_root() == tmp_path / "wsup"
    monkeypatch.setenv("WSUP_RUN_DIR", str(tmp_path / "chosen"))
    assert default_root() == tmp_path / "chosen"


@needs_root
def test_a_link_planted_by_another_user_on_the_way_is_refused(tmp_path: Path) -> None:
    sticky = tmp_path / "shared"
    sticky.mkdir(mode=0o1777)
    sticky.chmod(0o1777)
    (tmp_path / "real").mkdir()
    planted = sticky / "via"
    planted.symlink_to(tmp_path / "real")
    os.chown(planted, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(ConfigError, match=f"symbolic link of uid {NOBODY}"):
        open_root(planted / "wsup", create=True)
    assert not (tmp_path / "real" / "wsup").exists()
    trusted = sticky / "mine"
    trusted.symlink_to(tmp_path / "real")  # root's own link is followed
    os.close(open_root(trusted / "wsup", create=True))
    assert stat.S_IMODE((tmp_path / "real" / "wsup").stat().st_mode) == 0o700
