from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from tests.wsup_harness import ROOT, Instance, free_port


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Short on purpose: a Unix socket path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="wsup-t", dir="/tmp"))
    yield path
    _kill_instances(path)
    shutil.rmtree(path, ignore_errors=True)


def _kill_instances(run_dir: Path) -> None:
    """Safety net: a supervisor a test started with --daemon and failed to stop is killed with its workers here,
    before its run directory (and with it every way to reach it) is deleted."""
    procs: list[psutil.Process] = []
    for info_file in run_dir.glob("*/instance.json"):
        try:
            root = psutil.Process(int(orjson.loads(info_file.read_bytes())["pid"]))
            procs += [root, *root.children(recursive=True)]
        except (psutil.Error, KeyError, ValueError, orjson.JSONDecodeError):
            continue
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def wsup_env(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["WSUP_RUN_DIR"] = str(run_dir)
    env.pop("XDG_RUNTIME_DIR", None)
    return env


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_FAILED, False)
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def start_wsup(wsup_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Callable[..., Instance]]:
    """Start ``wsup start APP`` in the foreground; every instance started is killed (with its workers) at teardown."""
    started: list[Instance] = []

    def start(
        app: str = "app:asgi", *args: str, name: str = "t", port: int | None = None, cwd: Path = ROOT
    ) -> Instance:
        instance = Instance(wsup_env, port or free_port(), name, app, list(args), cwd)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.kill_everything()
        if request.node.stash.get(_FAILED, False):
            # The supervisor's and workers' own account is what explains a failure in CI.
            tail = "\n".join(instance.log().splitlines()[-80:])
            print(f"--- last lines of wsup instance {instance.name!r} ---\n{tail}")
