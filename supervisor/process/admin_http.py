"""A minimal, bounded HTTP/1.1 server side for the admin endpoint (supervisor process): one GET per connection.

The admin endpoint serves a handful of small documents and one event stream to operators and Prometheus; a full web
framework would be most of the supervisor's memory. What a peer sends is bounded in every dimension: the request
line and headers together (``MAX_HEAD_BYTES``), the number of headers, and the time to send them. Anything else gets
a 4xx and the connection closes; a body is never read (only GET and HEAD are served).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
READ_TIMEOUT_S = 10.0


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names; the last of repeated ones wins


def parse_head(head: bytes) -> HttpRequest:
    """Parse a request line and headers (``head`` ends with the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes any byte; kept for clarity of intent
        raise BadRequest(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, _ = parts
    if not target.startswith("/"):
        raise BadRequest(400, "the request target must be a path")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()
        if len(headers) > MAX_HEADERS:
            raise BadRequest(431, "too many headers")
    url = urlsplit(target)
    query = {key: values[-1] for key, values in parse_qs(url.query, max_num_fields=16).items()}
    return HttpRequest(method, unquote(url.path), query, headers)


async def read_request(reader: asyncio.StreamReader) -> HttpRequest:
    """Read one request head within ``READ_TIMEOUT_S`` (the reader's ``limit`` must be ``MAX_HEAD_BYTES``)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        raise BadRequest(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise BadRequest(400, "connection closed mid-request") from None
    except TimeoutError:
        raise BadRequest(408, "request head not received in time") from None
    except ValueError:  # the separator was found past the limit
        raise BadRequest(431, "request head too large") from None
    return parse_head(head)


def response_head(status: int, content_type: str, length: int | None, extra: dict[str, str] | None = None) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    for name, value in (extra or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(
    status: int, body: bytes, content_type: str, *, head_only: bool = False, extra: dict[str, str] | None = None
) -> bytes:
    return response_head(status, content_type, len(body), extra) + (b"" if head_only else body)
