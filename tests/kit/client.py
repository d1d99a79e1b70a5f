"""A tiny synchronous HTTP client for the test kit, on ``http.client`` only.

Layer: test kit, does network I/O (loopback only). It talks to the registries that the kit
starts: readiness probes, pushes, and the raw GETs that tests use to see what a registry
serves. It is deliberately independent of ``puller`` (no aiohttp, no anyio) so that a bug
in the code under test cannot hide itself in the tool that checks it.

Every URL must name a loopback host: the kit never talks to anything else.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

# The full Accept list: without it distribution answers 404 for OCI manifests and rewrites
# Docker schema2 manifests to signed schema1 (see shared/field-facts.md).
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ", ".join(
    (MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX)
)

# Error bodies and manifests are small; blobs are read whole (the kit's blobs are test-sized).
_DEFAULT_TIMEOUT = 30.0


class KitHTTPError(RuntimeError):
    """A registry answered with an unexpected status; carries the status and the body."""

    def __init__(self, what: str, status: int, body: bytes) -> None:
        shown = body[:2000].decode("utf-8", "replace")
        super().__init__(f"{what}: HTTP {status}: {shown}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class KitResponse:
    status: int
    headers: Mapping[str, str]  # keys lower-cased; repeated headers joined with ", "
    body: bytes
    complete: bool = True  # False: the server closed before Content-Length bytes came

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def basic_auth_header(username: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP Basic auth."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def require_loopback(url: str) -> urllib.parse.SplitResult:
    """Split ``url`` and refuse anything but http(s) to a loopback host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"test kit: only http(s) URLs, not {url!r}")
    host = parts.hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"test kit: refusing non-loopback host in {url!r}")
    return parts


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = _DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> KitResponse:
    """Send one request on a fresh connection and read the whole answer.

    Redirects are not followed: tests see exactly what the server said. A body cut short
    (a truncated blob served from a stale descriptor cache) comes back with
    ``complete=False`` and the bytes that did arrive, so tests can look at them.
    """
    parts = require_loopback(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.netloc, timeout=timeout, context=ssl_context or ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    send_headers = dict(headers or {})
    if body is not None:
        send_headers.setdefault("Content-Length", str(len(body)))
    try:
        conn.request(method, target, body=body, headers=send_headers)
        resp = conn.getresponse()
        complete = True
        try:
            data = resp.read()
        except http.client.IncompleteRead as exc:
            data, complete = exc.partial, False
        merged: dict[str, str] = {}
        for key, value in resp.getheaders():
            low = key.lower()
            merged[low] = f"{merged[low]}, {value}" if low in merged else value
        return KitResponse(resp.status, merged, data, complete)
    finally:
        conn.close()


def get_manifest(
    registry_url: str,
    repo: str,
    reference: str,
    *,
    accept: str = MANIFEST_ACCEPT,
    auth_header: str | None = None,
) -> KitResponse:
    """GET a manifest with the full Accept list; raise KitHTTPError unless 200."""
    headers = {"Accept": accept}
    if auth_header:
        headers["Authorization"] = auth_header
    resp = request("GET", f"{registry_url}/v2/{repo}/manifests/{reference}", headers=headers)
    if resp.status != 200:
        raise KitHTTPError(f"GET manifest {repo}:{reference}", resp.status, resp.body)
    return resp


def get_blob(
    registry_url: str,
    repo: str,
    digest: str,
    *,
    auth_header: str | None = None,
    byte_range: tuple[int, int | None] | None = None,
) -> KitResponse:
    """GET a blob (optionally a ``Range``, inclusive start/end); raise unless 200/206."""
    headers: dict[str, str] = {}
    if auth_header:
        headers["Authorization"] = auth_header
    if byte_range is not None:
        start, end = byte_range
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    resp = request("GET", f"{registry_url}/v2/{repo}/blobs/{digest}", headers=headers)
    if resp.status not in (200, 206):
        raise KitHTTPError(f"GET blob {repo}@{digest}", resp.status, resp.body)
    return resp
