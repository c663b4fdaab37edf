"""Operator HTTP endpoint on the daemon's event loop: GET /metrics (Prometheus) and GET /healthz.

Deliberately tiny (HTTP/1.0 semantics, one request per connection, GET/HEAD only, 8 KiB request limit,
5 s to send the request): it serves a monitoring scraper on loopback, not the internet. Handlers must be
cheap and non-blocking, because they run on the loop that also serves SMTP; the daemon keeps the numbers
they report fresh from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("mail2ticket.http")

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT = 5.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        return cls(status, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", "application/json")


Route = Callable[[], Response]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """(method, path) of a well-formed request; None for garbage, oversize or a slow client."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    return parts[0], parts[1].split("?", 1)[0]


def _serialize(response: Response, head_only: bool) -> bytes:
    lines = [
        f"HTTP/1.0 {response.status} {REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else response.body)


def make_handler(routes: dict[str, Route]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            if request is None:
                response, head_only = Response(400, b"bad request\n"), False
            else:
                method, path = request
                head_only = method == "HEAD"
                route = routes.get(path)
                if route is None:
                    response = Response(404, b"not found; try /metrics or /healthz\n")
                elif method not in ("GET", "HEAD"):
                    response = Response(405, b"only GET and HEAD\n")
                else:
                    try:
                        response = route()
                    except Exception:
                        log.exception("http_handler_failed", path=path)
                        response = Response(503, b"internal error\n")
            writer.write(_serialize(response, head_only))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return handle


async def start_http(host: str, port: int, routes: dict[str, Route]) -> asyncio.Server:
    return await asyncio.start_server(make_handler(routes), host=host, port=port, limit=MAX_REQUEST_BYTES,
                                      reuse_address=True)
