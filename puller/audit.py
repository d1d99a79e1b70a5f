"""Orchestration of a bulk mirror audit: many references, each distinct blob checked once.

Layer: I/O orchestration. Phases hand plain values (frozen dataclasses of strings and
ints) to each other, so any phase can run elsewhere (the blob phase on a distributed
engine): each opens its own session and keeps no live state between calls.

    enumerate   lines | catalog walk        -> Target*
    resolve     HEAD upstream, HEAD + GET   -> ResolvedImage*, configs checked (in each
                the mirror (every platform)    repository), Finding*
    distinct    the set of layers           -> BlobTask*        (pure)
    cached      SQLite record, --max-age    -> BlobOutcome* | BlobTask*
    verify      stream each blob once       -> BlobOutcome*
    join        outcomes x images           -> Finding* per image (pure)
    present     HEAD each (repository,      -> Finding* per image of that repository
                layer) no GET went through

A blob is fetched through one repository only, but the registry serves it through another
only if that repository links it; and a cached blob is not fetched at all. So every other
(repository, layer) pair, cached ones included, gets a HEAD.

Failures become findings, never cancellation: one image's error does not stop the audit.
A 429 slows that host down (honouring Retry-After) instead of failing images.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import aiohttp
import anyio

from puller.auditcache import AuditCache
from puller.checks import check_child
from puller.digest import Digest, is_digest, parse_digest
from puller.errors import (
    BlobMissing,
    DecompressionError,
    DiffIDMismatch,
    DigestMismatch,
    IntegrityError,
    InvalidContent,
    LayerTooLarge,
    NetworkError,
    NotFound,
    PullVerifyError,
    RegistryError,
    SizeMismatch,
    UsageError,
)
from puller.feed import Crowd
from puller.findings import (
    BLOB_CORRUPT,
    BLOB_MISSING,
    MANIFEST_MISMATCH,
    NETWORK_ERROR,
    REGISTRY_ERROR,
    STALE_DIGEST,
    TAG_MISSING,
    Finding,
    Summary,
    count_by_kind,
    exit_code_for,
)
from puller.imageconfig import parse_config
from puller.manifest import Descriptor, ImageIndex, ImageManifest, parse_manifest
from puller.mediatypes import layer_compression
from puller.pull import Puller, PullOptions, connect, fetch_config
from puller.reference import Reference, parse_reference
from puller.registry import BlobHead, RegistryClient, retry_after_seconds
from puller.report import LayerResult
from puller.transport import open_session

T = TypeVar("T")
K = TypeVar("K")

DEFAULT_JOBS = 8
DEFAULT_PER_REGISTRY = 4
RATE_LIMIT_PATIENCE = 600.0  # seconds of 429s one request waits through before failing


# ---------------------------------------------------------------------------------------
# Values handed between phases


@dataclass(frozen=True, slots=True)
class AuditSettings:
    mirror: str | None = None  # the host audited; None: each reference's own registry
    upstream: str | None = None  # compare tags against this host
    jobs: int = DEFAULT_JOBS  # requests in flight in all
    per_registry: int = DEFAULT_PER_REGISTRY  # requests in flight per host
    pull: PullOptions = field(default_factory=PullOptions)
    rate_limit_patience: float = RATE_LIMIT_PATIENCE


@dataclass(frozen=True, slots=True)
class Target:
    """One reference to audit: ``ref`` is a tag or a digest on ``host``."""

    reference: str  # as shown in findings
    host: str
    repository: str
    ref: str
    upstream: str = ""  # compare with this host's answer for ``ref``
    pinned: str = ""  # a digest the reference pinned (repo:tag@digest)


@dataclass(frozen=True, slots=True)
class LayerRef:
    digest: str
    size: int
    media_type: str
    diff_id: str  # "" when the config could not tell


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """An image manifest as the audited host served it (one per platform of an index)."""

    reference: str
    host: str
    repository: str
    manifest_digest: str
    platform: str
    config_digest: str
    layers: tuple[LayerRef, ...]


# A layer blob is judged per (host, digest, compression): two manifests may name the same
# bytes with different layer types, and each claim must be checked as what it says.
BlobKey = tuple[str, str, str]
# (host, repository, digest): where a blob must be served from
Placement = tuple[str, str, str]


def blob_key(host: str, digest: str, media_type: str) -> BlobKey:
    compression = layer_compression(media_type)
    return (host, digest, compression.value if compression else media_type)


@dataclass(frozen=True, slots=True)
class BlobTask:
    host: str
    repository: str  # one repository that references it: the one it is fetched from
    digest: str
    size: int
    media_type: str
    # The other repositories of ``host`` that use it: fetched through them in turn while
    # a repository answers 404, so one missing link neither hides the content nor is
    # blamed on the others.
    others: tuple[str, ...] = ()

    @property
    def key(self) -> BlobKey:
        return blob_key(self.host, self.digest, self.media_type)


@dataclass(frozen=True, slots=True)
class HeadTask:
    """A layer to ask ``repository`` for with a HEAD: does it serve what its manifests name?"""

    host: str
    repository: str
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class BlobOutcome:
    """What one distinct blob turned out to be. ``kind`` is "" when it verified."""

    host: str
    digest: str
    size: int
    kind: str = ""
    detail: str = ""
    expected: str = ""
    actual: str = ""
    message: str = ""
    diff_id: str = ""  # the actual diff_id of a verified layer
    bytes_read: int = 0
    cached: bool = False
    compression: str = ""  # how a layer was inflated: its diff_id holds only for that
    tried: tuple[str, ...] = ()  # repositories a GET went through, in order
    missing_in: tuple[str, ...] = ()  # those of them that answered 404

    @property
    def key(self) -> BlobKey:
        return (self.host, self.digest, self.compression)

    @property
    def ok(self) -> bool:
        return not self.kind


@dataclass(frozen=True, slots=True)
class Resolution:
    images: tuple[ResolvedImage, ...]
    configs: tuple[BlobOutcome, ...]
    findings: tuple[Finding, ...]
    unchecked: tuple[str, ...]  # references whose manifest could not be read


@dataclass(frozen=True, slots=True)
class AuditReport:
    targets: tuple[Target, ...]
    images: tuple[ResolvedImage, ...]
    findings: tuple[Finding, ...]
    unchecked: tuple[str, ...]
    summary: Summary


class AuditObserver(Protocol):
    def phase(self, name: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finding(self, finding: Finding) -> None: ...


class NoObserver:
    def phase(self, name: str, total: int) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None

    def finding(self, finding: Finding) -> None:
        return None


# ---------------------------------------------------------------------------------------
# Errors -> finding kinds (pure)

_CORRUPT_DETAIL: tuple[tuple[type[IntegrityError], str], ...] = (
    (DigestMismatch, "digest"),
    (SizeMismatch, "size"),
    (DecompressionError, "decompression"),
    (DiffIDMismatch, "diff-id"),
    (LayerTooLarge, "too-large"),
    (InvalidContent, "content"),
)


def classify(error: PullVerifyError) -> tuple[str, str]:
    """The finding kind and detail for an error met while checking a blob."""
    if isinstance(error, BlobMissing):
        return BLOB_MISSING, ""
    if isinstance(error, IntegrityError):
        for cls, detail in _CORRUPT_DETAIL:
            if isinstance(error, cls):
                return BLOB_CORRUPT, detail
        return BLOB_CORRUPT, error.kind
    if isinstance(error, NetworkError):
        return NETWORK_ERROR, error.kind
    return REGISTRY_ERROR, error.kind


def error_outcome(host: str, digest: str, size: int, error: PullVerifyError) -> BlobOutcome:
    kind, detail = classify(error)
    expected = getattr(error, "expected", None) or ""
    actual = getattr(error, "actual", None) or ""
    return BlobOutcome(
        host=host,
        digest=digest,
        size=size,
        kind=kind,
        detail=detail,
        expected=str(expected),
        actual=str(actual),
        message=error.message,
        bytes_read=getattr(error, "bytes_read", None) or 0,
    )


def error_finding(reference: str, host: str, subject: str, error: PullVerifyError) -> Finding:
    kind, detail = classify(error)
    if isinstance(error, IntegrityError) and kind == BLOB_MISSING and subject == "manifest":
        kind = REGISTRY_ERROR
    return Finding(
        reference=reference,
        kind=kind,
        host=host,
        subject=subject,
        expected=str(getattr(error, "expected", None) or ""),
        actual=str(getattr(error, "actual", None) or ""),
        detail=detail if kind == BLOB_CORRUPT else "",
        message=error.message,
    )


# ---------------------------------------------------------------------------------------
# Phase 1: enumerate


def targets_from_lines(lines: Iterable[str], settings: AuditSettings, source: str) -> list[Target]:
    """References one per line; ``#`` starts a comment; blank lines are skipped."""
    targets: list[Target] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ref = parse_reference(text)
        except PullVerifyError as exc:
            raise UsageError(f"{source}:{number}: {exc.message}") from exc
        targets.append(target_for(ref, settings))
    return targets


def target_for(ref: Reference, settings: AuditSettings) -> Target:
    host = settings.mirror or ref.api_host
    shown = settings.mirror or ref.registry
    name = ref.tag or str(ref.digest)
    sep = ":" if ref.tag else "@"
    return Target(
        reference=f"{shown}/{ref.repository}{sep}{name}",
        host=host,
        repository=ref.repository,
        ref=ref.manifest_ref if ref.tag is None else ref.tag,
        upstream=settings.upstream or "",
        pinned=str(ref.digest) if ref.digest and ref.tag else "",
    )


def repository_wanted(repository: str, globs: Sequence[str]) -> bool:
    return not globs or any(fnmatch.fnmatchcase(repository, g) for g in globs)


async def enumerate_catalog(
    registry: str,
    settings: AuditSettings,
    *,
    repo_globs: Sequence[str] = (),
    page_size: int = 1000,
    observer: AuditObserver | None = None,
) -> tuple[list[Target], list[Finding]]:
    """Every repository:tag of ``registry`` (Link pagination followed), filtered by glob.

    A repository whose tags cannot be listed becomes a finding; a catalog that cannot be
    read at all raises.
    """
    observer = observer or NoObserver()
    targets: list[Target] = []
    findings: list[Finding] = []
    async with open_connections(settings) as conns:
        client = await conns.client(registry)
        repositories = [
            r async for r in client.iter_catalog(page_size) if repository_wanted(r, repo_globs)
        ]
        observer.phase("listing tags", len(repositories))
        for repository in sorted(repositories):
            try:
                tags = [t async for t in client.iter_tags(repository)]
            except PullVerifyError as exc:
                found = error_finding(f"{registry}/{repository}", registry, "tag list", exc)
                findings.append(found)
                observer.finding(found)
                tags = []
            for tag in sorted(tags):
                ref = Reference(registry, repository, tag=tag)
                targets.append(target_for(ref, settings))
            observer.advance()
    return targets, findings


# ---------------------------------------------------------------------------------------
# Connections: one session, a client and a gate per host (live state lives only here)


class HostGate:
    """Per-host connection cap that shrinks on 429 and waits out Retry-After."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.limiter = anyio.CapacityLimiter(self.cap)
        self.resume_at = 0.0
        self.throttled = 0
        self._good_since = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self.limiter:
            while (pause := self.resume_at - anyio.current_time()) > 0:
                await anyio.sleep(pause)
            yield

    def saw_rate_limit(self, retry_after: float | None) -> None:
        self.throttled += 1
        self._good_since = 0
        delay = (
            retry_after if retry_after is not None else min(30.0, 0.5 * 2 ** min(6, self.throttled))
        )
        self.resume_at = max(self.resume_at, anyio.current_time() + delay)
        self.limiter.total_tokens = max(1, int(self.limiter.total_tokens) // 2)

    def saw_success(self) -> None:
        self._good_since += 1
        # Additive increase after a run of good answers: recover the rate slowly.
        if self._good_since >= 20 and self.limiter.total_tokens < self.cap:
            self.limiter.total_tokens = int(self.limiter.total_tokens) + 1
            self._good_since = 0


class GatedClient(RegistryClient):
    """A registry client that tells its host's gate about every 429 it meets."""

    gate: HostGate

    def _note_rate_limit(self, resp: aiohttp.ClientResponse) -> None:
        super()._note_rate_limit(resp)
        if resp.status == 429:
            self.gate.saw_rate_limit(retry_after_seconds(resp.headers.get("Retry-After")))


class Connections:
    def __init__(self, session: aiohttp.ClientSession, settings: AuditSettings) -> None:
        self.session = session
        self.settings = settings
        self.jobs = anyio.CapacityLimiter(max(1, settings.jobs))
        # Blobs still to verify across every registry: they share this machine's cores.
        self.crowd = Crowd(cores=settings.pull.cpu_threads or None, jobs=settings.jobs)
        self._clients: dict[str, GatedClient | PullVerifyError] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._pullers: dict[str, Puller] = {}

    async def client(self, host: str) -> GatedClient:
        """The client for ``host``, its scheme settled once (a failure is remembered)."""
        lock = self._locks.setdefault(host, anyio.Lock())
        async with lock:
            known = self._clients.get(host)
            if known is None:
                try:
                    probe = await connect(
                        self.session, Reference(host, "audit", tag="probe"), self.settings.pull
                    )
                except PullVerifyError as exc:
                    self._clients[host] = exc
                    raise
                client = GatedClient(
                    self.session,
                    probe.host,
                    scheme=probe.scheme,
                    authenticator=probe.auth,
                    retry=self.settings.pull.retry,
                )
                client.gate = HostGate(self.settings.per_registry)
                self._clients[host] = known = client
        if isinstance(known, PullVerifyError):
            raise known
        return known

    async def call(self, host: str, fn: Callable[[GatedClient], Awaitable[T]]) -> T:
        """``fn(client)`` within the global and per-host caps; 429s wait, never fail fast."""
        client = await self.client(host)
        deadline = anyio.current_time() + self.settings.rate_limit_patience
        while True:
            async with self.jobs, client.gate.slot():
                try:
                    result = await fn(client)
                except RegistryError as exc:
                    if exc.status != 429 or anyio.current_time() > deadline:
                        raise
                    client.gate.saw_rate_limit(exc.retry_after)
                    continue
            client.gate.saw_success()
            return result

    async def puller(self, host: str) -> Puller:
        if host not in self._pullers:
            self._pullers[host] = Puller(
                await self.client(host), self.settings.pull, crowd=self.crowd
            )
        return self._pullers[host]


@asynccontextmanager
async def open_connections(settings: AuditSettings) -> AsyncIterator[Connections]:
    transport = dataclasses.replace(
        settings.pull.transport, connections_per_host=max(1, settings.per_registry)
    )
    async with open_session(transport) as session:
        yield Connections(session, settings)


# ---------------------------------------------------------------------------------------
# Phase 2: resolve manifests (and configs, whose diff_ids the layers are judged by)


class _Resolver:
    def __init__(self, conns: Connections, observer: AuditObserver) -> None:
        self.conns = conns
        self.observer = observer
        self.images: list[ResolvedImage] = []
        self.findings: list[Finding] = []
        self.unchecked: list[str] = []
        self.configs: dict[Placement, BlobOutcome] = {}
        self._config_diff_ids: dict[Placement, tuple[str, ...] | None] = {}
        self._config_done: dict[Placement, anyio.Event] = {}

    def report(self, finding: Finding) -> None:
        self.findings.append(finding)
        self.observer.finding(finding)

    async def resolve(self, target: Target) -> None:
        try:
            await self._resolve(target)
        except PullVerifyError as exc:
            self.report(error_finding(target.reference, target.host, "manifest", exc))
            self.unchecked.append(target.reference)
        finally:
            self.observer.advance()

    async def _digest_on(self, host: str, repository: str, ref: str) -> str:
        """The digest ``host`` gives for ``ref``: HEAD first, GET only if HEAD does not say."""
        head = await self.conns.call(host, lambda c: c.head_manifest(repository, ref))
        if head.content_digest:
            return str(parse_digest(head.content_digest, what="Docker-Content-Digest"))
        fetched = await self.conns.call(host, lambda c: c.get_manifest(repository, ref))
        return str(Digest.of(fetched.data))

    async def _resolve(self, target: Target) -> None:
        host, repo = target.host, target.repository
        expected = target.pinned
        if target.upstream:
            try:
                expected = await self._digest_on(target.upstream, repo, target.ref)
            except PullVerifyError as exc:
                self.report(error_finding(target.reference, target.upstream, "manifest", exc))
                self.unchecked.append(target.reference)
                return
        try:
            # The audited host's bytes are needed anyway: GET at once (HEAD first is for
            # upstream, whose answer is only compared).
            fetched = await self.conns.call(host, lambda c: c.get_manifest(repo, target.ref))
        except NotFound as exc:
            if not target.upstream:
                raise
            self.report(
                Finding(
                    reference=target.reference,
                    kind=TAG_MISSING,
                    host=host,
                    subject="manifest",
                    expected=expected,
                    actual="HTTP 404",
                    message=exc.message,
                )
            )
            return
        served = Digest.of(fetched.data)
        mismatch: list[tuple[str, str, str]] = []
        claims = [("docker-content-digest", fetched.content_digest or "")]
        if is_digest(target.ref):
            claims.insert(0, ("digest", target.ref))
        for detail, claim in claims:
            if not claim:
                continue
            try:
                want = parse_digest(claim, what="Docker-Content-Digest")
            except InvalidContent as exc:
                mismatch.append((detail, claim, exc.message))
                continue
            got = str(Digest.of(fetched.data, want.algorithm))
            if got != str(want):
                mismatch.append((detail, str(want), got))
        for detail, want_text, got in mismatch:
            self.report(
                Finding(
                    reference=target.reference,
                    kind=MANIFEST_MISMATCH,
                    host=host,
                    subject="manifest",
                    expected=want_text,
                    actual=got,
                    detail=detail,
                    message=f"{host}/{repo}: manifest bytes hash to {got}, not {want_text}",
                )
            )
        # Stale is judged on what the bytes are; bytes that lie are reported as such above.
        if expected and not mismatch and str(served) != expected:
            self.report(
                Finding(
                    reference=target.reference,
                    kind=STALE_DIGEST,
                    host=host,
                    subject="manifest",
                    expected=expected,
                    actual=str(served),
                    message=f"{target.reference} names {served}, upstream names {expected}",
                )
            )
        if mismatch:
            return  # bytes that are not what they claim name nothing we can trust
        try:
            manifest = parse_manifest(fetched.data, fetched.content_type)
        except PullVerifyError as exc:
            self._manifest_corrupt(target, str(served), exc)
            return
        if isinstance(manifest, ImageManifest):
            await self._image(target, target.reference, str(served), "", manifest)
            return
        await self._index(target, manifest)

    def _manifest_corrupt(self, target: Target, digest: str, exc: PullVerifyError) -> None:
        self.report(
            Finding(
                reference=target.reference,
                kind=MANIFEST_MISMATCH,
                host=target.host,
                subject=f"manifest {digest}",
                detail="content",
                expected="a valid manifest",
                actual=exc.message,
                message=exc.message,
            )
        )

    async def _index(self, target: Target, index: ImageIndex) -> None:
        async with anyio.create_task_group() as tg:
            for entry in index.images():
                tg.start_soon(self._child, target, entry)

    async def _child(self, target: Target, entry: Descriptor) -> None:
        platform = str(entry.platform) if entry.platform else ""
        shown = f"{target.reference} [{platform or entry.digest.short}]"
        host, repo = target.host, target.repository
        try:
            fetched = await self.conns.call(host, lambda c: c.get_manifest(repo, str(entry.digest)))
            try:
                check_child(entry, fetched.data, subject=f"manifest {entry.digest}", checks=[])
            except (DigestMismatch, SizeMismatch) as exc:
                self.report(
                    Finding(
                        reference=shown,
                        kind=MANIFEST_MISMATCH,
                        host=host,
                        subject=f"manifest {entry.digest}",
                        detail="digest" if isinstance(exc, DigestMismatch) else "size",
                        expected=f"{entry.digest} ({entry.size} bytes)",
                        actual=f"{exc.actual} ({len(fetched.data)} bytes)",
                    )
                )
                return
            manifest = parse_manifest(fetched.data, fetched.content_type)
            if not isinstance(manifest, ImageManifest):
                self._manifest_corrupt(
                    target, str(entry.digest), InvalidContent("a nested index is not supported")
                )
                return
            await self._image(target, shown, str(entry.digest), platform, manifest)
        except PullVerifyError as exc:
            self.report(error_finding(shown, host, f"manifest {entry.digest}", exc))

    async def _image(
        self, target: Target, shown: str, digest: str, platform: str, manifest: ImageManifest
    ) -> None:
        host, repo = target.host, target.repository
        config = manifest.config
        diff_ids = await self._config(host, repo, config)
        outcome = self.configs[(host, repo, str(config.digest))]
        if not outcome.ok:
            self.report(_blob_finding(shown, "config", outcome))
        elif diff_ids is not None and len(diff_ids) != len(manifest.layers):
            self.report(
                Finding(
                    reference=shown,
                    kind=BLOB_CORRUPT,
                    host=host,
                    subject=f"config {config.digest}",
                    detail="content",
                    expected=f"{len(manifest.layers)} diff_ids",
                    actual=f"{len(diff_ids)} diff_ids",
                )
            )
            diff_ids = None
        layers = tuple(
            LayerRef(
                digest=str(d.digest),
                size=d.size,
                media_type=d.media_type,
                diff_id=diff_ids[i] if diff_ids is not None else "",
            )
            for i, d in enumerate(manifest.layers)
        )
        self.images.append(
            ResolvedImage(
                reference=shown,
                host=host,
                repository=repo,
                manifest_digest=digest,
                platform=platform,
                config_digest=str(config.digest),
                layers=layers,
            )
        )

    async def _config(self, host: str, repo: str, desc: Descriptor) -> tuple[str, ...] | None:
        """The config's diff_ids, fetching each distinct config once per repository: a
        registry serves a blob through a repository only if that repository links it (and
        configs are small)."""
        key = (host, repo, str(desc.digest))
        done = self._config_done.get(key)
        if done is not None:
            await done.wait()
            return self._config_diff_ids[key]
        done = self._config_done[key] = anyio.Event()
        try:
            outcome, diff_ids = await self._fetch_config(host, repo, desc)
            self.configs[key] = outcome
            self._config_diff_ids[key] = diff_ids
        finally:
            if key not in self.configs:  # cancelled: still wake the waiters
                self.configs[key] = BlobOutcome(host, str(desc.digest), desc.size, REGISTRY_ERROR)
                self._config_diff_ids[key] = None
            done.set()
        return diff_ids

    async def _fetch_config(
        self, host: str, repo: str, desc: Descriptor
    ) -> tuple[BlobOutcome, tuple[str, ...] | None]:
        try:
            data = await self.conns.call(host, lambda c: fetch_config(c, repo, desc, []))
            diff_ids = tuple(str(d) for d in parse_config(data).diff_ids)
        except PullVerifyError as exc:
            return error_outcome(host, str(desc.digest), desc.size, exc), None
        return BlobOutcome(host, str(desc.digest), desc.size, bytes_read=len(data)), diff_ids


async def resolve_images(
    targets: Sequence[Target], settings: AuditSettings, observer: AuditObserver | None = None
) -> Resolution:
    observer = observer or NoObserver()
    observer.phase("resolving manifests", len(targets))
    async with open_connections(settings) as conns:
        resolver = _Resolver(conns, observer)
        limiter = anyio.CapacityLimiter(max(1, settings.jobs))

        async def one(target: Target) -> None:
            async with limiter:
                await resolver.resolve(target)

        async with anyio.create_task_group() as tg:
            for target in targets:
                tg.start_soon(one, target)
    return Resolution(
        images=tuple(sorted(resolver.images, key=lambda i: i.reference)),
        configs=tuple(resolver.configs.values()),
        findings=tuple(resolver.findings),
        unchecked=tuple(resolver.unchecked),
    )


# ---------------------------------------------------------------------------------------
# Phase 3: the distinct blobs, and which of them an earlier run verified (pure / local)


def distinct_blobs(images: Iterable[ResolvedImage]) -> list[BlobTask]:
    """One task per blob key, in first-seen order, however many images share it."""
    first: dict[BlobKey, tuple[ResolvedImage, LayerRef]] = {}
    repositories: dict[BlobKey, list[str]] = {}
    for image in images:
        for layer in image.layers:
            key = by_blob(image, layer)
            first.setdefault(key, (image, layer))
            names = repositories.setdefault(key, [])
            if image.repository not in names:
                names.append(image.repository)
    tasks = []
    for key, (image, layer) in first.items():
        name, *others = repositories[key]
        tasks.append(
            BlobTask(
                image.host, name, layer.digest, layer.size, layer.media_type, others=tuple(others)
            )
        )
    return tasks


def split_cached(
    tasks: Iterable[BlobTask], cache: AuditCache | None
) -> tuple[list[BlobOutcome], list[BlobTask]]:
    cached: list[BlobOutcome] = []
    todo: list[BlobTask] = []
    for task in tasks:
        host, digest, compression = task.key
        hit = cache.lookup(host, digest, compression, task.size) if cache is not None else None
        if hit is None:
            todo.append(task)
        else:
            cached.append(
                BlobOutcome(
                    host,
                    digest,
                    task.size,
                    diff_id=hit.diff_id,
                    cached=True,
                    compression=compression,
                )
            )
    return cached, todo


# ---------------------------------------------------------------------------------------
# Phase 4: verify blobs, each once (plain data in, plain data out)


async def _verify_one(conns: Connections, task: BlobTask) -> BlobOutcome:
    """GET and verify the blob through its first repository, or the next while one
    answers 404."""
    missing: list[str] = []
    for repository in (task.repository, *task.others):
        outcome = await _verify_in(conns, task, repository)
        if outcome.kind != BLOB_MISSING:
            break
        missing.append(repository)
    tried = (*missing, repository) if outcome.kind != BLOB_MISSING else tuple(missing)
    return dataclasses.replace(outcome, tried=tried, missing_in=tuple(missing))


async def _verify_in(conns: Connections, task: BlobTask, repository: str) -> BlobOutcome:
    try:
        digest = parse_digest(task.digest)
        descriptor = Descriptor(task.media_type, digest, task.size)
        puller = await conns.puller(task.host)
        layer = LayerResult(index=0, descriptor=descriptor, expected_diff_id=None)

        async def fetch(_client: GatedClient) -> None:
            # The puller's own loop: streaming, Range resume, retries, CPU in threads.
            await puller.fetch_layer(repository, layer)

        await conns.call(task.host, fetch)
        verdict = layer.verdict
        if verdict is None:  # pragma: no cover - _fetch_layer sets it or raises
            raise RegistryError(f"layer {task.digest}: not verified")
        outcome = BlobOutcome(
            task.host,
            task.digest,
            task.size,
            diff_id=str(verdict.diff_id),
            bytes_read=verdict.compressed_size,
        )
    except PullVerifyError as exc:
        outcome = error_outcome(task.host, task.digest, task.size, exc)
    return dataclasses.replace(outcome, compression=task.key[2])


async def verify_blobs(
    tasks: Sequence[BlobTask],
    settings: AuditSettings,
    on_outcome: Callable[[BlobOutcome], None] | None = None,
) -> list[BlobOutcome]:
    """Fetch and verify each task's blob once; ``on_outcome`` sees each as it is known."""
    outcomes: list[BlobOutcome] = []
    async with open_connections(settings) as conns:

        async def one(task: BlobTask) -> None:
            try:
                outcome = await _verify_one(conns, task)
            finally:
                conns.crowd.unfinished -= 1
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

        conns.crowd.unfinished += len(tasks)
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(one, task)
    return outcomes


# ---------------------------------------------------------------------------------------
# Phase 5: join outcomes with the images that use them (pure)


def _blob_finding(reference: str, what: str, outcome: BlobOutcome) -> Finding:
    return Finding(
        reference=reference,
        kind=outcome.kind,
        host=outcome.host,
        subject=f"{what} {outcome.digest}",
        expected=outcome.expected,
        actual=outcome.actual,
        detail=outcome.detail if outcome.kind == BLOB_CORRUPT else "",
        message=outcome.message,
    )


def layer_findings(
    outcome: BlobOutcome, uses: Iterable[tuple[ResolvedImage, LayerRef]]
) -> list[Finding]:
    """Findings one layer outcome causes in each image that uses it: a repository that
    answered 404 is told so; the content's verdict holds for every repository (the bytes
    are the same bytes, stored once)."""
    found: list[Finding] = []
    for image, layer in uses:
        if image.repository in outcome.missing_in:
            missing = not_served(outcome.host, image.repository, outcome.digest, outcome.size)
            found.append(_blob_finding(image.reference, "layer", missing))
        elif not outcome.ok:
            found.append(_blob_finding(image.reference, "layer", outcome))
        elif layer.diff_id and outcome.diff_id != layer.diff_id:
            found.append(
                Finding(
                    reference=image.reference,
                    kind=BLOB_CORRUPT,
                    host=outcome.host,
                    subject=f"layer {outcome.digest}",
                    detail="diff-id",
                    expected=layer.diff_id,
                    actual=outcome.diff_id,
                    message=f"layer {outcome.digest} inflates to {outcome.diff_id}, "
                    f"the config of {image.reference} says {layer.diff_id}",
                )
            )
    return found


def not_served(host: str, repository: str, digest: str, size: int) -> BlobOutcome:
    """A repository answered 404 for a layer one of its manifests names."""
    return BlobOutcome(
        host,
        digest,
        size,
        kind=BLOB_MISSING,
        expected="blob present",
        actual="HTTP 404",
        message=f"layer {digest} is not served by {host}/{repository} (HTTP 404), "
        "though its manifest names it",
    )


def layer_uses(
    images: Iterable[ResolvedImage], key: Callable[[ResolvedImage, LayerRef], K]
) -> dict[K, list[tuple[ResolvedImage, LayerRef]]]:
    """Every (image, layer) use, grouped by ``key``."""
    uses: dict[K, list[tuple[ResolvedImage, LayerRef]]] = {}
    for image in images:
        for layer in image.layers:
            uses.setdefault(key(image, layer), []).append((image, layer))
    return uses


def by_blob(image: ResolvedImage, layer: LayerRef) -> BlobKey:
    return blob_key(image.host, layer.digest, layer.media_type)


# ---------------------------------------------------------------------------------------
# Phase 6: each repository serves the layers its manifests name (pure, then HEADs)


def by_placement(image: ResolvedImage, layer: LayerRef) -> Placement:
    return (image.host, image.repository, layer.digest)


def presence_checks(
    images: Iterable[ResolvedImage], fetched: Iterable[BlobOutcome]
) -> list[HeadTask]:
    """One HEAD per (host, repository, layer digest) the images use, first seen first.

    Pairs a GET of this run went through are left out: the GET proved them.
    """
    proven = {(o.host, repository, o.digest) for o in fetched for repository in o.tried}
    checks: dict[Placement, HeadTask] = {}
    for image in images:
        for layer in image.layers:
            where = by_placement(image, layer)
            if where not in proven and where not in checks:
                checks[where] = HeadTask(
                    image.host, image.repository, layer.digest, layer.size, layer.media_type
                )
    return list(checks.values())


def judge_head(task: HeadTask, answer: BlobHead | PullVerifyError) -> BlobOutcome:
    """What a HEAD answer (or the error it raised) says about ``task``'s layer."""
    served_by = f"{task.host}/{task.repository}"
    if isinstance(answer, PullVerifyError):
        outcome = error_outcome(task.host, task.digest, task.size, answer)
        if outcome.kind == BLOB_MISSING:
            return not_served(task.host, task.repository, task.digest, task.size)
        return outcome
    fine = BlobOutcome(task.host, task.digest, task.size)
    if answer.content_digest is not None:
        try:
            claimed = parse_digest(answer.content_digest, what="Docker-Content-Digest")
        except InvalidContent:
            claimed = None
        want = parse_digest(task.digest)
        # A header in another algorithm says nothing about this digest (as for a GET).
        if claimed is None or (claimed.algorithm == want.algorithm and claimed != want):
            return dataclasses.replace(
                fine,
                kind=BLOB_CORRUPT,
                detail="digest",
                expected=task.digest,
                actual=answer.content_digest,
                message=f"{served_by} answers for layer {task.digest} with "
                f"Docker-Content-Digest {answer.content_digest}",
            )
    # No Content-Length (a redirect's is its own body's) leaves only presence to judge;
    # some proxies answer every HEAD with Content-Length: 0.
    if answer.size and answer.size != task.size:
        return dataclasses.replace(
            fine,
            kind=BLOB_CORRUPT,
            detail="size",
            expected=str(task.size),
            actual=str(answer.size),
            message=f"{served_by} serves layer {task.digest} as {answer.size} bytes, "
            f"its manifest says {task.size}",
        )
    return fine


def presence_findings(
    outcome: BlobOutcome, uses: Iterable[tuple[ResolvedImage, LayerRef]]
) -> list[Finding]:
    """A finding in each image (of the repository asked) that uses a layer not served."""
    if outcome.ok:
        return []
    return [_blob_finding(image.reference, "layer", outcome) for image, _ in uses]


async def _head_one(conns: Connections, task: HeadTask) -> BlobOutcome:
    answer: BlobHead | PullVerifyError
    try:
        digest = parse_digest(task.digest)
        answer = await conns.call(task.host, lambda c: c.head_blob(task.repository, digest))
    except PullVerifyError as exc:
        answer = exc
    return judge_head(task, answer)


async def check_presence(
    tasks: Sequence[HeadTask],
    settings: AuditSettings,
    on_outcome: Callable[[HeadTask, BlobOutcome], None] | None = None,
) -> list[BlobOutcome]:
    """HEAD each task's layer in its repository; ``on_outcome`` sees each as it is known."""
    outcomes: list[BlobOutcome] = []
    async with open_connections(settings) as conns:

        async def one(task: HeadTask) -> None:
            outcome = await _head_one(conns, task)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(task, outcome)

        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(one, task)
    return outcomes


# ---------------------------------------------------------------------------------------
# The whole run


async def run_audit(
    targets: Sequence[Target],
    settings: AuditSettings,
    *,
    cache: AuditCache | None = None,
    observer: AuditObserver | None = None,
    early_findings: Sequence[Finding] = (),
    clock: Callable[[], float] = time.monotonic,
) -> AuditReport:
    observer = observer or NoObserver()
    started = clock()
    resolution = await resolve_images(targets, settings, observer)
    tasks = distinct_blobs(resolution.images)
    cached, todo = split_cached(tasks, cache)
    uses = layer_uses(resolution.images, by_blob)
    findings: list[Finding] = [*early_findings, *resolution.findings]
    # One finding per image and blob: a manifest may name a layer twice, and a HEAD may
    # meet what a GET already reported.
    told = {(f.reference, f.subject) for f in findings}

    def tell(found: Iterable[Finding]) -> None:
        for finding in found:
            if (finding.reference, finding.subject) not in told:
                told.add((finding.reference, finding.subject))
                findings.append(finding)
                observer.finding(finding)

    def take(outcome: BlobOutcome) -> None:
        host, digest, compression = outcome.key
        if cache is not None and not outcome.cached:
            if outcome.ok:
                cache.record(host, digest, compression, outcome.size, outcome.diff_id)
            else:
                cache.forget(host, digest, compression)
        tell(layer_findings(outcome, uses.get(outcome.key, [])))
        observer.advance()

    observer.phase("verifying blobs", len(tasks))
    for outcome in cached:
        take(outcome)
    fetched = await verify_blobs(todo, settings, take)

    heads = presence_checks(resolution.images, fetched)
    placed = layer_uses(resolution.images, by_placement)

    def judge(task: HeadTask, outcome: BlobOutcome) -> None:
        if cache is not None and outcome.kind == BLOB_CORRUPT:
            cache.forget(*blob_key(task.host, task.digest, task.media_type))  # check it again
        tell(presence_findings(outcome, placed[(task.host, task.repository, task.digest)]))
        observer.advance()

    observer.phase("checking blobs in each repository", len(heads))
    await check_presence(heads, settings, judge)
    configs = resolution.configs  # one per repository that uses it
    distinct_configs = {(o.host, o.digest) for o in configs}
    bytes_fetched = sum(o.bytes_read for o in fetched) + sum(o.bytes_read for o in configs)
    summary = Summary(
        images=len(resolution.images),
        references=len(targets),
        unchecked=len(resolution.unchecked),
        blobs=len(tasks) + len(distinct_configs),
        blobs_fetched=len(fetched) + len(configs),
        blobs_cached=len(cached),
        bytes_fetched=bytes_fetched,
        blobs_headed=len(heads),
        findings_by_kind=count_by_kind(findings),
        seconds=clock() - started,
        exit_code=exit_code_for(findings),
    )
    return AuditReport(
        targets=tuple(targets),
        images=resolution.images,
        findings=tuple(findings),
        unchecked=resolution.unchecked,
        summary=summary,
    )
