"""uvicorn's options, passed through to each worker: TLS (and a certificate renewed by a reload), proxy headers
trusted only from --forwarded-allow-ips, root path, extra headers, the env file, WebSocket limits; and the key's
password kept out of command lines, the app's environment, status and `wsup config`."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.wsup_harness import Instance, free_port, run_cli

PASSWORD = "correct horse battery staple"


def make_certificate(directory: Path, common_name: str, password: str) -> bytes:
    """A self-signed certificate for 127.0.0.1 and its encrypted key, written as cert.pem and key.pem; returns the
    certificate in DER form (what a client sees)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    encryption = serialization.BestAvailableEncryption(password.encode())
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def https_get(port: int, cafile: Path, path: str = "/scope") -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        result: dict[str, Any] = orjson.loads(response.read())
        return result
    finally:
        conn.close()


def test_tls_is_served_and_a_reload_picks_up_a_renewed_certificate(
    start_wsup: Callable[..., Instance], tmp_path: Path
) -> None:
    first = make_certificate(tmp_path, "first", PASSWORD)
    (tmp_path / "password").write_text(PASSWORD + "\n")
    wsup = start_wsup(
        "tests.apps.lifecycle_app:asgi", "-i", "2",
        "--ssl-keyfile", str(tmp_path / "key.pem"), "--ssl-certfile", str(tmp_path / "cert.pem"),
        "--ssl-keyfile-password-file", str(tmp_path / "password"),
    )  # fmt: skip
    status = wsup.wait_ready(2)
    assert status["address"].startswith("https://")
    assert served_certificate(wsup.port) == first
    scope = https_get(wsup.port, tmp_path / "cert.pem")
    assert scope["scheme"] == "https" and scope["password_seen"] is None  # the app never sees the password

    async def wss() -> int:
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        async with connect(f"wss://127.0.0.1:{wsup.port}/ws", ssl=context, open_timeout=10) as ws:
            return int(orjson.loads(await ws.recv())["pid"])

    assert asyncio.run(wss()) in {w["pid"] for w in status["workers"]}
    # The password is on no command line, in no status and in no `wsup config` output.
    for worker in status["workers"]:
        assert PASSWORD not in " ".join(psutil.Process(worker["pid"]).cmdline())
    assert PASSWORD not in orjson.dumps(status).decode()
    shown = wsup.cli(
        "config", "x:y", "--ssl-keyfile-password", PASSWORD,
        "--ssl-keyfile", str(tmp_path / "key.pem"), "--ssl-certfile", str(tmp_path / "cert.pem"),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert PASSWORD not in shown.stdout and "(set)" in shown.stdout

    second = make_certificate(tmp_path, "second", PASSWORD)  # renewed in place, as certbot does
    result = wsup.cli("reload", "--name", wsup.name)
    assert result.returncode == 0, result.stderr
    assert served_certificate(wsup.port) == second
    assert https_get(wsup.port, tmp_path / "cert.pem")["scheme"] == "https"


def _get(port: int, path: str, source: str = "127.0.0.1", headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def test_proxy_headers_root_path_headers_env_file_and_websocket_limit(
    start_wsup: Callable[..., Instance], tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("LIFECYCLE_GREETING=from the env file\n")
    wsup = start_wsup(
        "tests.apps.lifecycle_app:asgi", "-i", "2",
        "--forwarded-allow-ips", "127.0.0.2", "--root-path", "/api", "--header", "X-Served-By: wsup",
        "--env-file", str(tmp_path / ".env"), "--ws-max-size", "1000", "--limit-concurrency", "500",
    )  # fmt: skip
    wsup.wait_ready(2)
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    response, body = _get(wsup.port, "/scope", "127.0.0.2", forwarded)  # a trusted proxy
    scope = orjson.loads(body)
    assert (scope["client"], scope["scheme"]) == ("203.0.113.9", "https")
    assert scope["root_path"] == "/api" and scope["greeting"] == "from the env file"
    assert response.getheader("x-served-by") == "wsup"
    response, body = _get(wsup.port, "/scope", "127.0.0.1", forwarded)  # not in --forwarded-allow-ips
    assert orjson.loads(body)["client"] == "127.0.0.1"

    async def too_large() -> int | None:
        async with connect(f"{wsup.ws_url}/ws", open_timeout=10) as ws:
            await ws.recv()
            await ws.send("x" * 2000)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code

    assert asyncio.run(too_large()) == 1009  # message too big: uvicorn's ws_max_size applies


def test_no_proxy_headers_ignores_forwarded_headers(start_wsup: Callable[..., Instance]) -> None:
    wsup = start_wsup("tests.apps.lifecycle_app:asgi", "--no-proxy-headers")
    wsup.wait_ready(1)
    _, body = _get(wsup.port, "/scope", headers={"X-Forwarded-For": "203.0.113.9"})
    assert orjson.loads(body)["client"] == "127.0.0.1"


def test_a_daemon_gets_the_password_through_its_environment_not_its_command_line(
    wsup_env: dict[str, str], tmp_path: Path
) -> None:
    make_certificate(tmp_path, "daemon", PASSWORD)
    port = free_port()
    args = ["--ssl-keyfile", str(tmp_path / "key.pem"), "--ssl-certfile", str(tmp_path / "cert.pem")]
    started = run_cli(
        "start", "tests.apps.lifecycle_app:asgi", "--daemon", "--port", str(port), "--name", "tlsd",
        "--ssl-keyfile-password", PASSWORD, *args, env=wsup_env, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        status = orjson.loads(run_cli("status", "--name", "tlsd", "--json", env=wsup_env).stdout)
        pids = [status["supervisor"]["pid"], *(w["pid"] for w in status["workers"])]
        assert all(PASSWORD not in " ".join(psutil.Process(pid).cmdline()) for pid in pids)
        assert https_get(port, tmp_path / "cert.pem")["scheme"] == "https"
    finally:
        assert run_cli("stop", "--name", "tlsd", env=wsup_env).returncode == 0
