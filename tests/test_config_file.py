"""The config file: found in each place, overridden by the command line, every kind of error naming the key and
the file; `wsup start` with no argument runs the project; `wsup config` says where each setting comes from."""

from __future__ import annotations

import http.client
from pathlib import Path

import orjson
import pytest

from ipc.errors import ConfigError
from supervisor.cli import app_sections
from supervisor.cli.config_file import Resolved
from supervisor.cli.parser import start_parser
from supervisor.config import SupervisorConfig, parse_size
from tests.wsup_harness import free_port, run_cli


def _config(cwd: Path, env: dict[str, str], *args: str) -> dict[str, dict[str, object]]:
    result = run_cli("config", "--json", *args, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    rows = orjson.loads(result.stdout)["settings"]
    return {row["key"]: row for row in rows}


def test_wsup_toml_is_read_and_the_command_line_wins(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    (tmp_path / "wsup.toml").write_text('app = "main:asgi"\ninstances = 3\nmax-requests = 1000\nmax-memory = "512M"\n')
    rows = _config(tmp_path, wsup_env, "--max-requests", "5")
    assert rows["app"]["value"] == "main:asgi" and rows["app"]["source"] == f"file ({tmp_path / 'wsup.toml'})"
    assert rows["instances"]["value"] == 3
    assert rows["max-memory"]["value"] == 512 << 20
    assert (rows["max-requests"]["value"], rows["max-requests"]["source"]) == (5, "command line")
    assert (rows["port"]["value"], rows["port"]["source"]) == (8000, "default")
    assert rows["app-dir"]["value"] == str(tmp_path)  # the project is where its config file is


def test_pyproject_tool_table_and_an_explicit_config_file(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.wsup]\napp = "svc:app"\nport = 9001\n')
    assert _config(tmp_path, wsup_env)["port"]["value"] == 9001
    other = tmp_path / "deploy" / "prod.toml"
    other.parent.mkdir()
    other.write_text('app = "svc:app"\nport = 9002\nssl-keyfile-password = "hunter2"\n')
    shown = run_cli("config", "--config", str(other), env=wsup_env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "9002" in shown.stdout and "hunter2" not in shown.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('app = "a:b"\nmax_requests = 5\n', "key 'max_requests': keys are spelled like the options, with dashes"),
        ('app = "a:b"\nworkerz = 5\n', "unknown key 'workerz'"),
        ('app = "a:b"\nmax-requests = "lots"\n', "key 'max-requests' must be a whole number, got str 'lots'"),
        ('app = "a:b"\nport = true\n', "key 'port' must be a whole number, got bool True"),
        ('app = "a:b"\naccess-log = "no"\n', "key 'access-log' must be true or false"),
        ('app = "a:b"\nno-access-log = true\n', "write 'access-log = false'"),
        ('app = "a:b"\nmax-memory = "lots"\n', "key 'max-memory': --max-memory must be a size"),
        ('app = "a:b"\nheader = "X: y"\n', "key 'header' must be a list of strings"),
        ("app = [\n", "is not valid TOML"),
        ('app = "a:b"\nbalance = "round-robin"\n', "--balance must be one of"),
    ],
)
def test_each_kind_of_error_names_the_key_and_the_file(
    tmp_path: Path, wsup_env: dict[str, str], content: str, expected: str
) -> None:
    (tmp_path / "wsup.toml").write_text(content)
    for command in ("config", "start"):
        result = run_cli(command, env=wsup_env, cwd=tmp_path)
        assert result.returncode == 2, (result.stdout, result.stderr)
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("wsup: ") and expected in line, line
        if "--balance" not in expected:
            assert "wsup.toml" in line


def test_both_wsup_toml_and_tool_wsup_is_an_error_and_no_app_says_how(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    result = run_cli("start", env=wsup_env, cwd=tmp_path)
    assert result.returncode == 2 and "no APP" in result.stderr and "wsup.toml" in result.stderr
    (tmp_path / "wsup.toml").write_text('app = "a:b"\n')
    (tmp_path / "pyproject.toml").write_text('[tool.wsup]\napp = "a:b"\n')
    result = run_cli("config", env=wsup_env, cwd=tmp_path)
    assert result.returncode == 2 and "keep one of them" in result.stderr


def test_wsup_start_with_no_argument_runs_the_project_from_its_file(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    """Also the shadowing case: the project's own `app` package (a namespace package, no __init__.py) is imported,
    never the demo's `app` of the checkout wsup runs from."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n\n"
        "async def hello(request):\n    return PlainTextResponse('the project')\n\n"
        "asgi = Starlette(routes=[Route('/hello', hello)])\n"
    )
    file_port, port = free_port(), free_port()
    (tmp_path / "wsup.toml").write_text(
        f'app = "app.server:asgi"\nname = "proj"\ninstances = 2\nport = {file_port}\nmax-requests = 1000\n'
        "access-log = false\n"
    )
    result = run_cli("start", "--daemon", "--port", str(port), env=wsup_env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    try:
        status = orjson.loads(run_cli("status", "--name", "proj", "--json", env=wsup_env).stdout)
        assert status["port"] == port and len(status["workers"]) == 2
        assert status["recycling"]["max_requests"] == 1000
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/hello")
        assert conn.getresponse().read() == b"the project"
        conn.close()
    finally:
        stopped = run_cli("stop", "--name", "proj", env=wsup_env)
        assert stopped.returncode == 0, stopped.stderr


def test_a_missing_module_from_another_directory_is_not_the_demo(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    result = run_cli("start", "app:app", "--port", str(free_port()), "--name", "x", env=wsup_env, cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "could not import module 'app'" in last, last


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"port": "80"}, "--port must be a whole number, got str '80'"),
        ({"workers": True}, "-i/--instances must be a whole number, got bool True"),
        ({"max_lifetime": "1h"}, "--max-lifetime must be a number"),
        ({"proxy_headers": 1}, "--proxy-headers must be true or false"),
        ({"bogus": 1}, "unknown setting(s): bogus"),
    ],
)
def test_settings_built_in_code_are_type_checked_too(options: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SupervisorConfig.from_options({"app": "a:b", "workers": 1, "name": "x", **options})
    assert expected in str(caught.value)


def test_sizes() -> None:
    assert [parse_size(v) for v in ("512M", "1G", "1.5G", "300MiB", "1024", 2048, "0")] == [
        512 << 20, 1 << 30, 3 << 29, 300 << 20, 1024, 2048, 0,
    ]  # fmt: skip
    for bad in ("lots", "-1M", "nanM", "infG", ""):
        with pytest.raises(ConfigError, match="must be a size"):
            parse_size(bad)


# --- Several instances in one file: [apps.NAME] sections ---------------------------------------------------------

APPS_FILE = """\
app = "svc:api"
instances = 2
max-requests = 1000
access-log = false

[apps.api]
port = 8101

[apps.chat]
app = "svc:chat"
name = "chat-live"
port = 8102
instances = 1
"""


def _resolve(cwd: Path, given: dict[str, object] | None = None, only: str | None = None) -> list[Resolved]:
    instances = app_sections.resolve_all(given or {}, start_parser()._actions, cwd, only)
    for resolved in instances:
        app_sections.config_of(resolved)  # what `wsup start` checks before starting any
    return instances


def test_sections_share_the_top_level_keys_and_override_them(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    (tmp_path / "wsup.toml").write_text(APPS_FILE)
    file, section = f"file ({tmp_path / 'wsup.toml'})", f"({tmp_path / 'wsup.toml'})"
    shown = run_cli("config", "--json", "--max-requests", "7", env=wsup_env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    document = orjson.loads(shown.stdout)
    assert [(app["section"], app["name"]) for app in document["apps"]] == [("api", "api"), ("chat", "chat-live")]
    api, chat = ({row["key"]: row for row in app["settings"]} for app in document["apps"])
    assert (api["app"]["value"], api["app"]["source"]) == ("svc:api", file)
    assert (api["port"]["value"], api["port"]["source"]) == (8101, f"file [apps.api] {section}")
    assert (api["name"]["value"], api["name"]["source"]) == ("api", f"file [apps.api] {section}")
    assert (api["instances"]["value"], chat["instances"]["value"]) == (2, 1)
    assert (chat["app"]["value"], chat["app"]["source"]) == ("svc:chat", f"file [apps.chat] {section}")
    for rows in (api, chat):
        assert (rows["max-requests"]["value"], rows["max-requests"]["source"]) == (7, "command line")
        assert (rows["host"]["value"], rows["host"]["source"]) == ("127.0.0.1", "default")
        assert rows["app-dir"]["value"] == str(tmp_path)
    text = run_cli("config", "--only", "chat", env=wsup_env, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "section [apps.chat]: instance 'chat-live'" in text.stdout and "[apps.api]" not in text.stdout


def test_only_selects_sections_in_the_files_order_and_the_command_line_overrides_each(tmp_path: Path) -> None:
    (tmp_path / "wsup.toml").write_text(APPS_FILE + '\n[apps.admin]\nport = 0\napp-dir = "sub"\n')
    (tmp_path / "sub").mkdir()
    assert [r.section for r in _resolve(tmp_path)] == ["api", "chat", "admin"]
    assert [r.section for r in _resolve(tmp_path, only="admin, api")] == ["api", "admin"]
    one = _resolve(tmp_path, {"port": 9000, "name": "renamed"}, only="chat")
    assert len(one) == 1 and (one[0].options["port"], one[0].options["name"]) == (9000, "renamed")
    assert one[0].options["app"] == "svc:chat" and one[0].source("app").startswith("file [apps.chat]")
    admin = _resolve(tmp_path, only="admin")[0]
    assert admin.options["app_dir"] == str(tmp_path / "sub")  # relative to the file, like every path
    config = app_sections.config_of(admin)
    assert (config.name, config.app, config.port, config.workers) == ("admin", "svc:api", 0, 2)


@pytest.mark.parametrize(
    ("content", "given", "only", "expected"),
    [
        ("[apps.api]\nmax_requests = 5\n", {}, None, "wsup.toml [apps.api]: key 'max_requests': keys are spelled"),
        ("[apps.api]\nworkerz = 5\n", {}, None, "wsup.toml [apps.api]: unknown key 'workerz'"),
        ('[apps.api]\nport = "80"\n', {}, None, "wsup.toml [apps.api]: key 'port' must be a whole number"),
        ('max-requests = "x"\n[apps.api]\n', {}, None, "wsup.toml: key 'max-requests' must be a whole number"),
        ('[apps.api]\nbalance = "rr"\n', {}, None, "wsup.toml [apps.api]: --balance must be one of"),
        ('name = "x"\n[apps.api]\n', {}, None, "wsup.toml: key 'name' cannot be shared by every [apps.NAME]"),
        ("apps = 3\n", {}, None, "wsup.toml: 'apps' must hold one [apps.NAME] table"),
        ("[apps]\n", {}, None, "wsup.toml: 'apps' must hold one [apps.NAME] table"),
        ("[apps]\napi = 3\n", {}, None, "wsup.toml: [apps.api] must be a table of settings, got int 3"),
        ('[apps."a b"]\nport = 1\n', {}, None, "wsup.toml [apps.a b]: invalid instance name 'a b'"),
        ('[apps.a]\nname = "x"\nport = 1\n[apps.b]\nname = "x"\n', {}, None, "[apps.a] and [apps.b] would both be"),
        ("[apps.a]\n[apps.b]\n", {}, None, "[apps.a] and [apps.b] would both listen on port 8000"),
        ('[apps.a]\nhost = "0.0.0.0"\nport = 1\n[apps.b]\nport = 1\n', {}, None, "would both listen on port 1"),
        ("[apps.a]\nport = 1\n[apps.b]\nport = 2\n", {"port": 3}, None, "with the options of the command line"),
        ("[apps.a]\nport = 1\n[apps.b]\nport = 2\n", {}, "a,c", "--only: no section [apps.c] in"),
        ("[apps.a]\nport = 1\n[apps.b]\nport = 2\n", {}, ",", "--only ',': name sections separated by commas"),
        ("port = 1\n", {}, "a", "has no [apps.NAME] sections to choose from"),
    ],
)
def test_each_kind_of_section_error_names_the_key_the_section_and_the_file(
    tmp_path: Path, content: str, given: dict[str, object], only: str | None, expected: str
) -> None:
    (tmp_path / "wsup.toml").write_text('app = "a:b"\n' + content)
    with pytest.raises(ConfigError) as caught:
        _resolve(tmp_path, given, only)
    assert expected in str(caught.value), str(caught.value)
    if "--only" not in expected:
        assert str(tmp_path / "wsup.toml") in str(caught.value)


def test_a_bad_section_starts_nothing_and_two_with_one_port_neither(tmp_path: Path, wsup_env: dict[str, str]) -> None:
    port = free_port()
    (tmp_path / "wsup.toml").write_text(
        f'app = "svc:asgi"\n[apps.good]\nport = {port}\n[apps.bad]\nport = {free_port()}\nreload-batch = 0\n'
    )
    for args in ((), ("--only", "good,bad")):
        result = run_cli("start", *args, env=wsup_env, cwd=tmp_path)
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert result.stderr.strip().startswith(f"wsup: {tmp_path / 'wsup.toml'} [apps.bad]: "), result.stderr
    result = run_cli("start", "--port", str(port), env=wsup_env, cwd=tmp_path)
    assert result.returncode == 2 and "would both listen on port" in result.stderr, result.stderr
    status = run_cli("status", env=wsup_env, cwd=tmp_path)  # nothing was started: each says so, and exit 3
    assert status.returncode == 3 and status.stdout.split() == ["good", "not", "running", "bad", "not", "running"]
