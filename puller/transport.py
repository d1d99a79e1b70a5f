"""The aiohttp session, TLS settings, timeouts, and translation of aiohttp errors.

Layer: I/O. This is the only module that turns aiohttp and ssl exceptions into the
project's error tree; everything above it sees ``NetworkError`` / ``TLSError``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from puller import __version__
from puller.errors import CertificateError, NetworkError, PullVerifyError, TLSError

USER_AGENT = f"pull-verify/{__version__}"
READ_BUFSIZE = 4 << 20  # large socket reads: fewer wakeups on the hot path
MAX_ERROR_BODY = 64 << 10


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 15.0
    sock_read: float = 30.0  # a stalled body fails after this long without a byte


@dataclass(frozen=True, slots=True)
class TransportOptions:
    insecure_hosts: frozenset[str] = frozenset()  # plain HTTP allowed for these hosts
    ca_files: tuple[Path, ...] = ()
    tls_verify: bool = True
    client_cert: tuple[Path, Path] | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    connections_per_host: int = 16


def make_ssl_context(options: TransportOptions) -> ssl.SSLContext | bool:
    if not options.tls_verify:
        return False
    context = ssl.create_default_context()
    for ca in options.ca_files:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load CA certificate {ca}: {exc}") from exc
    if options.client_cert is not None:
        cert, key = options.client_cert
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load client certificate {cert}: {exc}") from exc
    return context


@asynccontextmanager
async def open_session(options: TransportOptions) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(
        ssl=make_ssl_context(options),
        limit=0,
        limit_per_host=options.connections_per_host,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=options.timeouts.connect, sock_read=options.timeouts.sock_read
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT},
        read_bufsize=READ_BUFSIZE,
        # Blob digests cover the bytes as stored; a transparently decoded body would not
        # match, and we ask for identity anyway.
        auto_decompress=False,
        trust_env=False,
    ) as session:
        yield session


def translate(exc: BaseException, what: str) -> PullVerifyError:
    """One sentence for a failed exchange with a server, chained by the caller."""
    if isinstance(exc, PullVerifyError):
        return exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return CertificateError(
            f"{what}: TLS certificate verification failed: {exc.certificate_error}"
        )
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return TLSError(f"{what}: TLS error: {exc}")
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError | TimeoutError):
        return NetworkError(f"{what}: timed out waiting for the server")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return NetworkError(f"{what}: cannot connect to {exc.host}:{exc.port}: {exc.strerror}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return NetworkError(f"{what}: connection broke off mid-body: {exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return NetworkError(f"{what}: server closed the connection")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return NetworkError(f"{what}: {type(exc).__name__}: {exc}")
    return NetworkError(f"{what}: {type(exc).__name__}: {exc}")
