"""The CLI runs in the user's shell: commands other than `start` import none of the supervisor process's code."""

from __future__ import annotations

import subprocess
import sys

import orjson

from tests.wsup_harness import ROOT

_PROBE = """
import sys, orjson
from supervisor.cli import main
try:
    main.main(["status", "--name", "nobody"])
except SystemExit:
    pass
print(orjson.dumps(sorted(sys.modules)).decode())
"""


def test_status_imports_neither_steering_nor_the_supervisor_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    modules = set(orjson.loads(result.stdout.strip().splitlines()[-1]))
    assert "supervisor.cli.commands" in modules  # the probe did run the command
    loaded = sorted(m for m in modules if m.startswith(("supervisor.steering", "supervisor.process", "uvicorn")))
    assert loaded == [], f"`wsup status` imported {loaded}"
