"""The aiohttp session, TLS settings, timeouts, and translation of aiohttp errors.

Layer: I/O. This is the only module that turns aiohttp and ssl exceptions into the
project's error tree; everything above it sees ``NetworkError`` / ``TLSError``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp

from puller import __version__
from puller.errors import CertificateError, NetworkError, PullVerifyError, TLSError

USER_AGENT = f"pull-verify/{__version__}"
READ_BUFSIZE = 256 << 10  # per connection; aiohttp pauses the socket at twice this buffered
MAX_ERROR_BODY = 64 << 10


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 15.0
    sock_read: float = 30.0  # a stalled body fails after this long without a byte


# docker's convention: per-host CAs and client certificates live under certs.d/<host[:port]>/.
DEFAULT_CERTS_D = Path("/etc/docker/certs.d")
CERTS_D_ENV = "PULL_VERIFY_CERTS_D"  # another root for certs.d (tests never write to /etc)


def default_certs_d() -> Path:
    override = os.environ.get(CERTS_D_ENV)
    return Path(override) if override else DEFAULT_CERTS_D


@dataclass(frozen=True, slots=True)
class TransportOptions:
    insecure_hosts: frozenset[str] = frozenset()  # plain HTTP allowed for these hosts
    ca_files: tuple[Path, ...] = ()
    tls_verify: bool = True
    client_cert: tuple[Path, Path] | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    connections_per_host: int = 16
    # Root of the certs.d tree searched per host; None: no per-host certificates.
    certs_d: Path | None = field(default_factory=default_certs_d)
    # Like skopeo's --cert-dir: *.crt, *.cert and *.key for every host, instead of certs.d.
    cert_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class HostCertificates:
    """What a certs.d directory holds for one host: CAs and at most one client pair."""

    ca_files: tuple[Path, ...] = ()
    client_cert: tuple[Path, Path] | None = None


def host_certificates(directory: Path) -> HostCertificates:
    """``*.crt`` are CAs; ``NAME.cert`` with ``NAME.key`` is a client certificate.

    A ``.cert`` without its ``.key`` (or the reverse) is refused, as docker does: half a
    client identity is a configuration mistake, not something to ignore.
    """
    try:
        entries = sorted(p for p in directory.iterdir() if p.is_file())
    except FileNotFoundError:
        return HostCertificates()
    except OSError as exc:
        raise TLSError(f"cannot read certificate directory {directory}: {exc}") from exc
    cas = tuple(p for p in entries if p.suffix == ".crt")
    certs = {p.stem: p for p in entries if p.suffix == ".cert"}
    keys = {p.stem: p for p in entries if p.suffix == ".key"}
    for stem in sorted(certs.keys() ^ keys.keys()):
        lone = certs.get(stem) or keys[stem]
        wanted = ".key" if stem in certs else ".cert"
        raise TLSError(f"{lone} has no matching {stem}{wanted} in {directory}")
    pairs = [(certs[stem], keys[stem]) for stem in sorted(certs)]
    if len(pairs) > 1:
        names = ", ".join(str(cert.name) for cert, _ in pairs)
        raise TLSError(f"{directory} holds several client certificates ({names}); keep one")
    return HostCertificates(cas, pairs[0] if pairs else None)


def certificates_for(options: TransportOptions, netloc: str) -> HostCertificates:
    """The extra CAs and client certificate for ``host[:port]``, options and files merged."""
    found = HostCertificates()
    if options.cert_dir is not None:
        found = host_certificates(options.cert_dir)
    elif options.certs_d is not None:
        found = host_certificates(options.certs_d / netloc)
    return HostCertificates(
        ca_files=(*options.ca_files, *found.ca_files),
        client_cert=options.client_cert or found.client_cert,
    )


def make_ssl_context(options: TransportOptions, netloc: str | None = None) -> ssl.SSLContext | bool:
    """The system trust store plus --ca-cert, plus certs.d for ``netloc`` when given.

    ``True`` means nothing to add: aiohttp's own verifying context (built when aiohttp is
    imported) serves, and loading the system store again would cost ~20 ms per context.
    """
    if not options.tls_verify:
        return False
    certs = (
        certificates_for(options, netloc)
        if netloc is not None
        else HostCertificates(options.ca_files, options.client_cert)
    )
    if not certs.ca_files and certs.client_cert is None:
        return True
    context = ssl.create_default_context()
    for ca in certs.ca_files:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load CA certificate {ca}: {exc}") from exc
    if certs.client_cert is not None:
        cert, key = certs.client_cert
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(f"cannot load client certificate {cert}: {exc}") from exc
    return context


class _PerHostTLSConnector(aiohttp.TCPConnector):
    """A connector whose TLS settings depend on the host, as certs.d wants.

    aiohttp has one SSL context per connector; the per-request hook it consults is
    ``_get_ssl_context``, so that is the one place we override. Contexts are built once
    per ``host:port`` and kept for the session.
    """

    def __init__(self, options: TransportOptions, **kwargs: Any) -> None:
        super().__init__(ssl=make_ssl_context(options), **kwargs)
        self._options = options
        self._contexts: dict[str, ssl.SSLContext | bool] = {}

    def _get_ssl_context(self, req: aiohttp.ClientRequest) -> ssl.SSLContext | None:
        if not req.is_ssl() or req.ssl is not True or not self._options.tls_verify:
            return super()._get_ssl_context(req)
        netloc = req.url.raw_authority or f"{req.host}:{req.port}"
        context = self._contexts.get(netloc)
        if context is None:
            context = make_ssl_context(self._options, netloc)
            self._contexts[netloc] = context
        if context is True:
            return super()._get_ssl_context(req)
        assert isinstance(context, ssl.SSLContext)
        return context


@asynccontextmanager
async def open_session(options: TransportOptions) -> AsyncIterator[aiohttp.ClientSession]:
    connector = _PerHostTLSConnector(
        options,
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
        cause = exc.certificate_error
        reason = getattr(cause, "verify_message", None) or str(cause)
        netloc = exc.host if exc.port in (None, 443) else f"{exc.host}:{exc.port}"
        return CertificateError(
            f"{what}: the TLS certificate of {netloc} is not trusted ({reason}); "
            f"give its CA with --ca-cert or put it in certs.d/{netloc}/ca.crt"
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


def host_port(parts: SplitResult) -> str:
    """``host[:port]`` of a URL, never its user info."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def redact_url(url: str) -> str:
    """A URL without user info or query string, which often carry credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{host_port(parts)}{parts.path}"
