"""The /health answer as a pure function of the instance's facts."""

from __future__ import annotations

from supervisor.process.health import HealthFacts, health


def test_healthy_while_one_worker_is_ready_and_not_stopping() -> None:
    assert health(HealthFacts(ready=1, workers=4, stopping=False, operation="reload"))[0]
    ok, body = health(HealthFacts(ready=0, workers=4, stopping=False, operation=None))
    assert not ok and body["reasons"] == ["no ready worker"]
    ok, body = health(HealthFacts(ready=4, workers=4, stopping=True, operation=None))
    assert not ok and body["status"] == "unavailable" and body["reasons"] == ["stopping"]


def test_a_draining_host_is_unhealthy_for_balancers_even_with_ready_workers() -> None:
    ok, body = health(HealthFacts(ready=4, workers=4, stopping=False, operation=None, draining=True))
    assert not ok and body["reasons"] == ["draining"]
