"""supervisor/config.py and ipc/settings.py: the instance's settings, validated once, and the worker spec."""

from __future__ import annotations

import pytest

from ipc.errors import ConfigError
from ipc.settings import WorkerSpec, validate_app_path
from supervisor.config import SupervisorConfig, parse_instances


def test_parse_instances() -> None:
    assert parse_instances("4") == 4
    assert parse_instances("max") >= 1
    for bad in ("x", "1.5", "129", "-3"):
        with pytest.raises(ConfigError):
            parse_instances(bad)


@pytest.mark.parametrize("app", ["app:asgi", "pkg.mod:obj.attr", "_x:y"])
def test_valid_app_paths(app: str) -> None:
    assert validate_app_path(app) == app


@pytest.mark.parametrize("app", ["app", "app:", ":asgi", "a b:c", "app:asgi:x", "1mod:x"])
def test_invalid_app_paths(app: str) -> None:
    with pytest.raises(ConfigError, match="module:attribute"):
        validate_app_path(app)


def test_config_rejects_inconsistent_timeouts() -> None:
    with pytest.raises(ConfigError, match="heartbeat-timeout"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "heartbeat_timeout": 0.2})
    with pytest.raises(ConfigError, match="graceful-timeout must be between"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "graceful_timeout": 0})
    with pytest.raises(ConfigError, match="graceful-timeout must be between"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "graceful_timeout": float("nan")})
    with pytest.raises(ConfigError, match="unknown setting"):
        SupervisorConfig.from_options({"app": "app:asgi", "workers": 1, "name": "x", "gracefull_timeout": 1})


def test_settings_round_trip_through_the_worker_spec() -> None:
    config = SupervisorConfig.from_options({"app": "app:asgi", "workers": 2, "name": "x", "ws_drain_window": 0.5})
    spec = WorkerSpec(config.worker, 3, 1, 7, 42, "ipc:///s", "ipc:///i", "ipc:///o")
    assert WorkerSpec.from_json(spec.to_json()) == spec
    assert config.worker.ws_drain_window == 0.5 and config.worker.graceful_timeout == 30.0
    with pytest.raises(ConfigError, match="bad worker spec"):
        WorkerSpec.from_json('{"settings": 1}')


def test_recycle_concurrency_is_at_least_one() -> None:
    base = {"app": "app:asgi", "workers": 4, "name": "x"}
    assert SupervisorConfig.from_options(base).recycle_concurrency == 1
    assert SupervisorConfig.from_options({**base, "recycle_concurrency": 2}).recycle_concurrency == 2
    for bad in (0, -1, 1000):
        with pytest.raises(ConfigError, match="recycle-concurrency must be between 1 and"):
            SupervisorConfig.from_options({**base, "recycle_concurrency": bad})
    with pytest.raises(ConfigError, match="recycle_concurrency|recycle-concurrency"):
        SupervisorConfig.from_options({**base, "recycle_concurrency": "2"})
