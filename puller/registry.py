"""The registry HTTP API: ping, manifests, blobs (as unverified streams), tags, catalog.

Layer: I/O. Nothing returned here is verified: manifests come back as the exact bytes
served with the headers that describe them, blobs as open responses. Callers verify.

Auth: the first request of a scope that meets a 401 answers the challenge and is sent
once more; ``Authorization`` goes only to the registry host (and the token realm), never
to a redirect target on another host.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from puller.auth.challenge import parse_challenges_from
from puller.auth.tokens import Authenticator
from puller.digest import Digest, parse_digest
from puller.errors import (
    AuthError,
    BlobMissing,
    ContentDigestMismatch,
    InvalidContent,
    NotFound,
    PullVerifyError,
    RegistryError,
    TLSError,
)
from puller.manifest import MAX_MANIFEST_BYTES
from puller.mediatypes import MANIFEST_ACCEPT
from puller.retry import Attempts, RetryPolicy
from puller.transport import MAX_ERROR_BODY, host_port, redact_url, translate

MAX_REDIRECTS = 10
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_TAG_PAGES = 10_000
_LINK_RE = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest exactly as served: unverified until its digest is checked."""

    data: bytes
    content_type: str | None
    content_digest: str | None  # the Docker-Content-Digest header, as sent
    url: str


@dataclass(frozen=True, slots=True)
class ManifestHead:
    content_digest: str | None
    content_type: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class BlobHead:
    """What a HEAD of a blob in one repository claimed: unverified, as sent."""

    size: int | None  # Content-Length of a 200; None for a redirect or when not sent
    content_digest: str | None  # the Docker-Content-Digest header, as sent
    redirected: bool  # answered 3xx: the repository serves it from elsewhere


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: str | None
    remaining: str | None


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes whatever Content-Length says."""
    if resp.content_length is not None and resp.content_length > limit:
        raise InvalidContent(f"{what} is {resp.content_length} bytes, over the {limit} limit")
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = await resp.content.read(limit + 1 - total)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise InvalidContent(f"{what} is over the {limit} byte limit")
    return b"".join(parts)


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from ``Retry-After``: delay-seconds or an HTTP-date (RFC 9110)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # unreadable: fall back to our own backoff
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return seconds if seconds > 0 else 0.0  # also turns NaN into 0


def scope_for(repository: str) -> str:
    return f"repository:{repository}:pull"


class RegistryClient:
    """One registry host, speaking the distribution API over a shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        host: str,
        *,
        scheme: str = "https",
        authenticator: Authenticator | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.session = session
        self.host = host
        self.scheme = scheme
        self.auth = authenticator or Authenticator(host)
        self.retry = retry or RetryPolicy()
        self.rate_limit: RateLimit | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    # -- the exchange every call goes through ------------------------------------------------

    @asynccontextmanager
    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        scope: str,
        what: str,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request to the registry host, answering one 401 challenge if met.

        Yields the response whatever its status; redirects are not followed here.
        """
        headers = dict(headers or {})
        for attempt in (1, 2):
            auth = await self.auth.authorization(self.session, scope)
            if auth is not None:
                headers["Authorization"] = auth
            try:
                resp = await self.session.request(
                    method, url, headers=headers, allow_redirects=False
                )
            except Exception as exc:
                raise translate(exc, what) from exc
            try:
                self._note_rate_limit(resp)
                if resp.status == 401 and attempt == 1:
                    challenges = parse_challenges_from(resp.headers.getall("WWW-Authenticate", []))
                    resp.release()
                    if not challenges:
                        raise AuthError(f"{what}: denied (HTTP 401) with no challenge", status=401)
                    headers["Authorization"] = await self.auth.answer(
                        self.session, challenges, scope, refused=headers.get("Authorization")
                    )
                    continue
                if resp.status == 401:
                    # The answered challenge was refused: one sentence saying why.
                    refusal = resp.headers.getall("WWW-Authenticate", [])
                    raise self.auth.refused(what, parse_challenges_from(refusal), scope)
                yield resp
                return
            finally:
                resp.release()
        raise AssertionError("unreachable")  # pragma: no cover

    def _note_rate_limit(self, resp: aiohttp.ClientResponse) -> None:
        limit = resp.headers.get("RateLimit-Limit")
        remaining = resp.headers.get("RateLimit-Remaining")
        if limit is not None or remaining is not None:
            self.rate_limit = RateLimit(limit, remaining)

    async def error_for(self, resp: aiohttp.ClientResponse, what: str) -> PullVerifyError:
        """The typed error for a non-success response, with the registry's own codes."""
        try:
            body = await resp.content.read(MAX_ERROR_BODY)
        except Exception:  # the status alone still tells what went wrong
            body = b""
        codes: tuple[str, ...] = ()
        detail = ""
        try:
            doc = json.loads(body)
            errors = doc.get("errors") if isinstance(doc, dict) else None
            if isinstance(errors, list):
                codes = tuple(str(e.get("code")) for e in errors if isinstance(e, dict))
                messages = [str(e.get("message")) for e in errors if isinstance(e, dict)]
                detail = "; ".join(m for m in messages if m and m != "None")
        except (ValueError, UnicodeDecodeError):
            pass
        status = resp.status
        suffix = f": {', '.join(codes)}" + (f" ({detail})" if detail else "") if codes else ""
        if status in (401, 403):
            return AuthError(
                f"{what}: access denied (HTTP {status}){suffix}", status=status, codes=codes
            )
        if status == 404:
            return NotFound(f"{what}: not found (HTTP 404){suffix}", status=status, codes=codes)
        if status == 429:
            return RegistryError(
                f"{what}: rate limited (HTTP 429){suffix}",
                status=status,
                codes=codes,
                retryable=True,
                retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
            )
        retryable = status >= 500 or status == 408
        return RegistryError(
            f"{what}: registry answered HTTP {status}{suffix}",
            status=status,
            codes=codes,
            retryable=retryable,
            retry_after=retry_after_seconds(resp.headers.get("Retry-After")) if retryable else None,
        )

    # -- API calls ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/: checks the host speaks the API and learns its auth challenge."""
        url = f"{self.base_url}/v2/"
        what = f"{self.host}: ping"
        attempts = Attempts(self.retry)
        while True:
            try:
                async with self._exchange("GET", url, scope="", what=what) as resp:
                    if resp.status == 401:
                        # A registry that demands credentials even to answer a ping; fine, the
                        # real calls answer the challenge with their own scope.
                        return
                    if resp.status != 200:
                        raise await self.error_for(resp, what)
                    return
            except PullVerifyError as exc:
                await attempts.wait(exc)

    async def get_manifest(self, repository: str, ref: str) -> FetchedManifest:
        url = f"{self.base_url}/v2/{repository}/manifests/{ref}"
        what = (
            f"manifest {self.host}/{repository}:{ref}"
            if ":" not in ref
            else (f"manifest {self.host}/{repository}@{ref}")
        )
        attempts = Attempts(self.retry)
        while True:
            try:
                async with self._exchange(
                    "GET",
                    url,
                    scope=scope_for(repository),
                    what=what,
                    headers={"Accept": MANIFEST_ACCEPT},
                ) as resp:
                    if resp.status != 200:
                        raise await self.error_for(resp, what)
                    data = await read_bounded(resp, MAX_MANIFEST_BYTES, what)
                    return FetchedManifest(
                        data=data,
                        content_type=resp.headers.get("Content-Type"),
                        content_digest=resp.headers.get("Docker-Content-Digest"),
                        url=url,
                    )
            except aiohttp.ClientError as exc:
                await attempts.wait(translate(exc, what))
            except PullVerifyError as exc:
                await attempts.wait(exc)

    async def head_manifest(self, repository: str, ref: str) -> ManifestHead:
        """HEAD of a manifest: does not count against Docker Hub's pull quota."""
        url = f"{self.base_url}/v2/{repository}/manifests/{ref}"
        what = f"manifest {self.host}/{repository}:{ref}"
        attempts = Attempts(self.retry)
        while True:
            try:
                async with self._exchange(
                    "HEAD",
                    url,
                    scope=scope_for(repository),
                    what=what,
                    headers={"Accept": MANIFEST_ACCEPT},
                ) as resp:
                    if resp.status != 200:
                        raise await self.error_for(resp, what)
                    return ManifestHead(
                        content_digest=resp.headers.get("Docker-Content-Digest"),
                        content_type=resp.headers.get("Content-Type"),
                        size=resp.content_length,
                    )
            except PullVerifyError as exc:
                await attempts.wait(exc)

    @asynccontextmanager
    async def open_blob(
        self, repository: str, digest: Digest, *, offset: int = 0
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An open response for a blob, redirects followed; its body is unverified.

        With ``offset`` a Range request is made; the caller checks whether the server
        honoured it (206 and Content-Range) or sent the whole blob (200).
        """
        what = f"blob {digest} of {self.host}/{repository}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = f"{self.base_url}/v2/{repository}/blobs/{digest}"
        async with self._exchange(
            "GET", url, scope=scope_for(repository), what=what, headers=headers
        ) as resp:
            if resp.status in REDIRECT_STATUSES:
                async with self._follow(resp, headers, what) as final:
                    check_blob_content_digest(final, digest, what)
                    yield final
                return
            await self._check_blob_status(resp, what, digest)
            check_blob_content_digest(resp, digest, what)
            yield resp

    async def head_blob(self, repository: str, digest: Digest) -> BlobHead:
        """HEAD of a blob: does ``repository`` serve it? A 404 raises ``BlobMissing``.

        A redirect is not followed: the registry checks the repository before it redirects
        to storage, and storage may refuse a HEAD on a URL signed for GET.
        """
        what = f"blob {digest} of {self.host}/{repository}"
        url = f"{self.base_url}/v2/{repository}/blobs/{digest}"
        # identity: a Content-Length for a compressed transfer would not be the blob's size
        headers = {"Accept-Encoding": "identity"}
        attempts = Attempts(self.retry)
        while True:
            try:
                async with self._exchange(
                    "HEAD", url, scope=scope_for(repository), what=what, headers=headers
                ) as resp:
                    content_digest = resp.headers.get("Docker-Content-Digest")
                    if resp.status in REDIRECT_STATUSES:
                        # The Content-Length of a redirect is its own body's, not the blob's.
                        return BlobHead(None, content_digest, redirected=True)
                    await self._check_blob_status(resp, what, digest)
                    return BlobHead(resp.content_length, content_digest, redirected=False)
            except aiohttp.ClientError as exc:
                await attempts.wait(translate(exc, what))
            except PullVerifyError as exc:
                await attempts.wait(exc)

    async def _check_blob_status(
        self, resp: aiohttp.ClientResponse, what: str, digest: Digest
    ) -> None:
        if resp.status in (200, 206):
            return
        error = await self.error_for(resp, what)
        if resp.status == 404:
            raise BlobMissing(
                f"{what}: the manifest names this blob but the registry does not have it "
                "(HTTP 404)",
                subject=str(digest),
                expected="blob present",
                actual="HTTP 404",
            )
        raise error

    @asynccontextmanager
    async def _follow(
        self, first: aiohttp.ClientResponse, headers: dict[str, str], what: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Follow blob redirects; credentials never leave the registry host."""
        seen = {str(first.url)}
        resp = first
        origin = urlsplit(self.base_url)
        for _ in range(MAX_REDIRECTS):
            location = resp.headers.get("Location")
            if not location:
                raise RegistryError(f"{what}: redirect without a Location", status=resp.status)
            url = urljoin(str(resp.url), location)
            if url in seen:
                raise RegistryError(f"{what}: redirect loop at {redact_url(url)}")
            seen.add(url)
            target = urlsplit(url)
            if target.scheme not in ("http", "https"):
                raise RegistryError(f"{what}: redirect to unsupported URL {redact_url(url)}")
            if origin.scheme == "https" and target.scheme == "http":
                raise TLSError(f"{what}: refusing a redirect from HTTPS to plain HTTP")
            hop_headers = dict(headers)
            if (target.scheme, target.netloc) == (origin.scheme, origin.netloc):
                auth = self.auth.header_for(scope_for_url(url))
                if auth:
                    hop_headers["Authorization"] = auth
            try:
                nxt = await self.session.get(url, headers=hop_headers, allow_redirects=False)
            except Exception as exc:
                raise translate(exc, what) from exc
            if nxt.status in REDIRECT_STATUSES:
                nxt.release()
                resp = nxt
                continue
            try:
                if nxt.status not in (200, 206):
                    if nxt.status == 404:
                        raise BlobMissing(
                            f"{what}: redirect target {redact_url(url)} answered HTTP 404",
                            subject=what,
                            expected="blob present",
                            actual="HTTP 404",
                        )
                    raise await self.error_for(nxt, f"{what} (redirected to {host_port(target)})")
                yield nxt
                return
            finally:
                nxt.release()
        raise RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects")

    async def get_blob_bytes(self, repository: str, digest: Digest, limit: int) -> bytes:
        """A small blob (a config) whole, bounded; still unverified."""
        what = f"blob {digest} of {self.host}/{repository}"
        attempts = Attempts(self.retry)
        while True:
            try:
                async with self.open_blob(repository, digest) as resp:
                    return await read_bounded(resp, limit, what)
            except aiohttp.ClientError as exc:
                await attempts.wait(translate(exc, what))
            except PullVerifyError as exc:
                await attempts.wait(exc)

    async def _get_json_pages(
        self, url: str, scope: str, what: str, key: str
    ) -> AsyncIterator[list[Any]]:
        for _ in range(MAX_TAG_PAGES):
            attempts = Attempts(self.retry)
            while True:
                try:
                    async with self._exchange("GET", url, scope=scope, what=what) as resp:
                        if resp.status != 200:
                            raise await self.error_for(resp, what)
                        body = await read_bounded(resp, MAX_MANIFEST_BYTES, what)
                        link = resp.headers.get("Link")
                        break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    await attempts.wait(translate(exc, what))
                except PullVerifyError as exc:
                    await attempts.wait(exc)
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidContent(f"{what}: response is not JSON") from exc
            items = doc.get(key) if isinstance(doc, dict) else None
            yield [i for i in items if isinstance(i, str)] if isinstance(items, list) else []
            match = _LINK_RE.search(link or "")
            if match is None:
                return
            url = urljoin(url, match.group(1))

    async def iter_tags(self, repository: str) -> AsyncIterator[str]:
        url = f"{self.base_url}/v2/{repository}/tags/list"
        what = f"tag list of {self.host}/{repository}"
        async for page in self._get_json_pages(url, scope_for(repository), what, "tags"):
            for tag in page:
                yield tag

    async def iter_catalog(self, page_size: int = 1000) -> AsyncIterator[str]:
        url = f"{self.base_url}/v2/_catalog?n={page_size}"
        what = f"catalog of {self.host}"
        async for page in self._get_json_pages(url, "registry:catalog:*", what, "repositories"):
            for repository in page:
                yield repository


def check_blob_content_digest(resp: aiohttp.ClientResponse, digest: Digest, what: str) -> None:
    """A server naming another blob in Docker-Content-Digest is serving the wrong one.

    Its body would fail the digest check anyway; refusing on the header names the mix-up
    before a byte is read. A header in another algorithm is left to the body's digest.
    """
    header = resp.headers.get("Docker-Content-Digest")
    if header is None:
        return
    claimed = parse_digest(header, what=f"{what}: Docker-Content-Digest")
    if claimed.algorithm == digest.algorithm and claimed != digest:
        raise ContentDigestMismatch(
            f"{what}: registry claims Docker-Content-Digest {claimed} for it",
            subject=f"blob {digest}",
            expected=str(digest),
            actual=str(claimed),
            bytes_read=0,
        )


def scope_for_url(url: str) -> str:
    """The pull scope of a same-host /v2/<name>/blobs/... URL, or '' if it is not one."""
    path = urlsplit(url).path
    if path.startswith("/v2/") and "/blobs/" in path:
        return scope_for(path[len("/v2/") : path.index("/blobs/")])
    return ""
