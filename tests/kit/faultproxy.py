"""A fault-injecting HTTP proxy in front of a real registry, for the network-fault tests.

Layer: test kit, does network I/O (loopback only). A real aiohttp server runs in a
background thread with its own event loop; it forwards every request to the upstream
registry and, when a rule matches, breaks the answer the way real networks and real
caches do: resets, 5xx, 429, stalls, short or long bodies, flipped bytes, redirects,
HTML pages, lying headers, ignored or mislabelled ranges.

Rules are tried in order; the first that matches and has firings left is applied (and
counted), so ``times=1`` gives "fails once, then works". Every request is logged with
its ``Range`` header, the status sent and the fault applied, for tests to assert on.

The upstream body is read whole before it is damaged: test blobs are small, and knowing
the length lets a fault lie about it precisely.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self

import aiohttp
from aiohttp import web

from tests.kit.client import require_loopback
from tests.kit.serving import LoopThread, Stoppable

# Hop-by-hop and length headers are the proxy's own business, not copied from upstream.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "host",
        "upgrade",
        "proxy-connection",
        "te",
        "trailer",
    }
)
_STOP_TIMEOUT = 5.0


class Fault(StrEnum):
    RESET = "reset"  # send N body bytes, then a TCP reset
    STATUS = "status"  # answer `status` (500, 502, 503, ...) with an error body
    RATE_LIMIT = "rate-limit"  # 429 with Retry-After: `retry_after`
    STALL = "stall"  # send N body bytes, then nothing for `stall` seconds, then close
    SHORT_BODY = "short-body"  # full Content-Length, N bytes, then a clean close
    LONG_BODY = "long-body"  # `extra` bytes appended, Content-Length counting them
    FLIP_BYTE = "flip-byte"  # invert the byte at body offset N
    REDIRECT = "redirect"  # 307 to `location` (another host, or a path that loops)
    REPLACE_BODY = "replace-body"  # 200 with `body` and `headers` (an HTML page, bad JSON)
    WRONG_DIGEST_HEADER = "wrong-digest-header"  # Docker-Content-Digest: `digest_header`
    IGNORE_RANGE = "ignore-range"  # drop the Range header: upstream answers 200, whole body
    WRONG_CONTENT_RANGE = "wrong-content-range"  # 206 body as asked, Content-Range shifted
    # The real body without Content-Length, in HTTP chunks of odd sizes (a CDN or a proxy
    # that streams); with `after_bytes`, the connection is reset after that many bytes.
    CHUNKED = "chunked"


@dataclass(slots=True)
class Rule:
    """One fault, where it applies, and how many more times it fires (None: always)."""

    fault: Fault
    path_contains: str = ""  # a blob digest, "/manifests/", "" for every request
    method: str | None = "GET"
    only_with_range: bool = False  # fire only on requests that carry a Range header
    times: int | None = 1
    after_bytes: int = 0  # RESET, STALL, SHORT_BODY: body bytes sent first; FLIP_BYTE: offset
    status: int = 503
    retry_after: str = "0"
    stall: float = 30.0  # seconds; the proxy's stop() cuts it short
    extra: bytes = b"garbage"
    location: str = ""
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    chunked: bool = False  # REPLACE_BODY: no Content-Length, chunked encoding
    digest_header: str = "sha256:" + "0" * 64
    shift: int = 1  # WRONG_CONTENT_RANGE: how far the claimed start is moved
    fired: int = 0

    def matches(self, method: str, path: str, has_range: bool) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.only_with_range and not has_range:
            return False
        return self.path_contains in path


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    method: str
    path: str
    range: str | None
    authorization: bool  # whether an Authorization header came (never its value)
    fault: Fault | None
    status: int | None  # what the proxy answered (None: the connection was cut first)


class FaultProxy(Stoppable):
    """``with FaultProxy(upstream_url) as proxy:`` a proxy on a free loopback port.

    ``proxy.host`` is ``127.0.0.1:PORT`` for references; ``proxy.add(rule)`` arms a fault;
    ``proxy.log`` is every request seen, in order, each logged before its answer is sent
    (so a client that has finished has been logged).
    """

    def __init__(self, upstream_url: str, *, host: str = "127.0.0.1") -> None:
        require_loopback(upstream_url)
        require_loopback(f"http://{host}/")
        self.upstream_url = upstream_url.rstrip("/")
        self.bind_host = host
        self.port = 0
        self.rules: list[Rule] = []
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._server: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing: asyncio.Event | None = None

    # -- addresses ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- rules and log --------------------------------------------------------------------

    def add(self, *rules: Rule) -> Self:
        with self._lock:
            self.rules.extend(rules)
        return self

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def requests_for(self, path_contains: str, method: str = "GET") -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if r.method == method and path_contains in r.path]

    def _take_rule(self, method: str, path: str, has_range: bool) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, has_range):
                    rule.fired += 1
                    return rule
        return None

    def _record(self, request: web.Request, fault: Fault | None, status: int | None) -> None:
        entry = LoggedRequest(
            method=request.method,
            path=request.path_qs,
            range=request.headers.get("Range"),
            authorization="Authorization" in request.headers,
            fault=fault,
            status=status,
        )
        with self._lock:
            self.log.append(entry)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        self._server = LoopThread(f"fault-proxy-{id(self)}", self._serve, self._shutdown)
        self._server.start()
        return self

    async def _serve(self) -> None:
        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind_host, 0)
        await site.start()
        server = site._server  # the only way aiohttp tells the port it bound
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # Wake handlers that stall on purpose before the loop stops under them.
            closing = self._closing
            server.stop(first=closing.set if closing is not None else None)

    def __enter__(self) -> Self:
        return self.start()

    # -- the handler ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        has_range = "Range" in request.headers
        rule = self._take_rule(request.method, request.path, has_range)
        fault = rule.fault if rule is not None else None
        if rule is not None:
            early = self._early_answer(rule, request)
            if early is not None:
                self._record(request, fault, early.status)
                return early
        forward_headers = {
            k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED
        }
        if fault is Fault.IGNORE_RANGE:
            forward_headers.pop("Range", None)
        assert self._session is not None
        body = await request.read() if request.can_read_body else None
        async with self._session.request(
            request.method,
            self.upstream_url + request.path_qs,
            headers=forward_headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            headers = _forwardable(upstream.headers.items())
            status = upstream.status
        if rule is None or fault is Fault.IGNORE_RANGE:
            self._record(request, fault, status)
            return web.Response(status=status, body=data, headers=headers)
        return await self._damaged(request, rule, status, headers, data)

    def _early_answer(self, rule: Rule, request: web.Request) -> web.StreamResponse | None:
        """Faults that answer without asking upstream."""
        if rule.fault is Fault.STATUS:
            return web.json_response(
                {"errors": [{"code": "UNAVAILABLE", "message": "injected by fault proxy"}]},
                status=rule.status,
            )
        if rule.fault is Fault.RATE_LIMIT:
            return web.json_response(
                {"errors": [{"code": "TOOMANYREQUESTS", "message": "injected by fault proxy"}]},
                status=429,
                headers={"Retry-After": rule.retry_after},
            )
        if rule.fault is Fault.REDIRECT:
            location = rule.location or request.path_qs  # no location: a loop on itself
            return web.Response(status=307, headers={"Location": location})
        return None

    async def _damaged(
        self,
        request: web.Request,
        rule: Rule,
        status: int,
        headers: dict[str, str],
        data: bytes,
    ) -> web.StreamResponse:
        fault = rule.fault
        if fault is Fault.REPLACE_BODY:
            resp = web.StreamResponse(status=200, headers=dict(rule.headers))
            if rule.chunked:
                resp.enable_chunked_encoding()
            else:
                resp.content_length = len(rule.body)
            self._record(request, fault, 200)  # before the client can see the answer
            await resp.prepare(request)
            await resp.write(rule.body)
            await resp.write_eof()
            return resp
        if fault is Fault.WRONG_DIGEST_HEADER:
            headers["Docker-Content-Digest"] = rule.digest_header
            self._record(request, fault, status)
            return web.Response(status=status, body=data, headers=headers)
        if fault is Fault.FLIP_BYTE:
            at = min(rule.after_bytes, len(data) - 1)
            damaged = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
            self._record(request, fault, status)
            return web.Response(status=status, body=damaged, headers=headers)
        if fault is Fault.LONG_BODY:
            self._record(request, fault, status)
            return web.Response(status=status, body=data + rule.extra, headers=headers)
        if fault is Fault.CHUNKED:
            return await self._chunked(request, rule, status, headers, data)
        if fault is Fault.WRONG_CONTENT_RANGE:
            claimed = headers.get("Content-Range", "")
            headers["Content-Range"] = _shift_content_range(claimed, rule.shift)
            self._record(request, fault, status)
            return web.Response(status=status, body=data, headers=headers)
        # RESET, STALL, SHORT_BODY: promise the whole body, send part of it, then fail.
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(data)
        resp.force_close()
        self._record(request, fault, None)
        await resp.prepare(request)
        await resp.write(data[: rule.after_bytes])
        transport = request.transport
        if fault is Fault.STALL:
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), rule.stall)
        if transport is not None:
            if fault is Fault.RESET:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER with a zero timeout: close() sends RST, not FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        return resp

    async def _chunked(
        self,
        request: web.Request,
        rule: Rule,
        status: int,
        headers: dict[str, str],
        data: bytes,
    ) -> web.StreamResponse:
        headers.pop("Content-Length", None)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.enable_chunked_encoding()
        self._record(request, rule.fault, status)
        await resp.prepare(request)
        end = rule.after_bytes or len(data)
        sizes = itertools.cycle(CHUNK_SIZES)
        pos = 0
        while pos < end:
            piece = data[pos : min(end, pos + next(sizes))]
            await resp.write(piece)  # aiohttp sends each write as one HTTP chunk
            pos += len(piece)
        if rule.after_bytes and request.transport is not None:
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp


# HTTP chunk sizes for Fault.CHUNKED: tiny, odd, and larger than a socket read.
CHUNK_SIZES = (1, 7, 4096, 100, 65_537, 300_000)


def _forwardable(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in items:
        if key.lower() not in _NOT_FORWARDED:
            headers[key] = value
    return headers


def _shift_content_range(header: str, shift: int) -> str:
    """``bytes S-E/T`` with S and E moved by ``shift``: a range other than the one asked."""
    try:
        unit, _, rest = header.partition(" ")
        span, _, total = rest.partition("/")
        start, _, end = span.partition("-")
        return f"{unit} {int(start) - shift}-{int(end) - shift}/{total}"
    except ValueError:
        return "bytes 0-0/1"


def html_error_page(size: int = 600) -> bytes:
    """What a broken pull-through cache or captive portal serves with a 200."""
    head = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>"
    tail = b"</body></html>\n"
    filler = b"<p>upstream unavailable</p>" * max(1, (size - len(head) - len(tail)) // 27)
    return head + filler + tail
