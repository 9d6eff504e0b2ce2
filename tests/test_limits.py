"""supervisor/process/limits.py: the open-files limit is raised to the hard limit, and the limits are described."""

from __future__ import annotations

import resource
import subprocess
import sys

import orjson

from supervisor.process.limits import describe_limits
from tests.wsup_harness import ROOT

_PROBE = """
import resource, orjson
from supervisor.process.limits import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
print(orjson.dumps([raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard]).decode())
"""


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT, check=True)
    raised, soft, hard = orjson.loads(out.stdout)
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert raised == soft == expected


def test_limits_are_described_for_status() -> None:
    limits = describe_limits(backlog=1 << 20)
    assert limits["open_files"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limits["somaxconn"] is not None:
        assert limits["accept_queue"] == limits["somaxconn"]  # the kernel caps the backlog: status says so
