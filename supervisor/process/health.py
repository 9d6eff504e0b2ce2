"""Whether the instance should receive traffic: the one answer of ``GET /health`` (supervisor process).

A pure function of a few facts, so that every condition that takes an instance out of a balancer's rotation (a stop
in progress, no ready worker; a host drain, for instance) is added here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class HealthFacts:
    ready: int  # slots whose worker is ready
    workers: int  # slots
    stopping: bool
    operation: str | None  # "reload", "scale", "restart" while one runs
    draining: bool = False  # `wsup drain`: the host asks balancers for no new connections


def health(facts: HealthFacts) -> tuple[bool, dict[str, Any]]:
    """(healthy, the JSON body): healthy while at least one worker is ready and the instance is neither stopping
    nor draining."""
    reasons = []
    if facts.stopping:
        reasons.append("stopping")
    if facts.ready < 1:
        reasons.append("no ready worker")
    if facts.draining:
        reasons.append("draining")  # an HTTP-only balancer stops sending, as HAProxy does on the agent's "drain"
    body: dict[str, Any] = {
        "status": "ok" if not reasons else "unavailable",
        "ready": facts.ready,
        "workers": facts.workers,
        "operation": facts.operation,
    }
    if reasons:
        body["reasons"] = reasons
    return not reasons, body
