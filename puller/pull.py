"""Orchestration of one image: resolve, negotiate, verify every manifest, config and layer.

Layer: I/O orchestration. The fixed order of checks for one reference:

    1. manifest bytes  == pinned digest, == Docker-Content-Digest     (exact bytes served)
    2. index entry     -> child manifest == the digest and size its index gave
    3. config blob     == its descriptor (digest, size); its digest is the image ID
    4. diff_ids        one per layer
    5. every layer     concurrently: digest and size as sent, then inflate, then diff_id

Failures are recorded in the result, not raised: one broken layer does not hide the
verdict on the others. Only cancellation escapes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import aiohttp
import anyio

from puller.auth.dockerconfig import docker_credentials
from puller.auth.tokens import Authenticator, Credentials
from puller.checks import check_child, check_config, check_config_size, check_manifest
from puller.digest import Digest
from puller.errors import (
    CertificateError,
    InvalidContent,
    NetworkError,
    PullVerifyError,
    RegistryError,
    UnsupportedContent,
)
from puller.feed import Crowd, ThreadedFeeder, usable_cores
from puller.imageconfig import parse_config
from puller.manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    choose_platform,
    host_platform,
    parse_manifest,
)
from puller.mediatypes import layer_compression
from puller.reference import Reference
from puller.registry import FetchedManifest, RegistryClient
from puller.report import Check, ImageResult, LayerResult, PullResult
from puller.retry import Attempts, RetryPolicy
from puller.sink import BlobSink, BlobWriter, DiscardSink
from puller.transport import TransportOptions, open_session, translate
from puller.verify import LayerVerifier

DEFAULT_JOBS = 4
DEFAULT_MAX_LAYER_SIZE = 64 << 30


@dataclass(frozen=True, slots=True)
class PullOptions:
    platform: Platform | None = None  # None: this machine's
    all_platforms: bool = False
    jobs: int = DEFAULT_JOBS
    max_layer_size: int | None = DEFAULT_MAX_LAYER_SIZE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: TransportOptions = field(default_factory=TransportOptions)
    credentials: Credentials | None = None
    cpu_threads: int = 0  # 0: one per core


class Progress(Protocol):
    def image_started(self, image: ImageResult) -> None: ...
    def layer_started(self, image: ImageResult, layer: LayerResult) -> None: ...
    def layer_advanced(self, layer: LayerResult, nbytes: int) -> None: ...
    def layer_finished(self, image: ImageResult, layer: LayerResult) -> None: ...
    def retrying(self, what: str, error: PullVerifyError, delay: float) -> None: ...


class NoProgress:
    def image_started(self, image: ImageResult) -> None:
        return None

    def layer_started(self, image: ImageResult, layer: LayerResult) -> None:
        return None

    def layer_advanced(self, layer: LayerResult, nbytes: int) -> None:
        return None

    def layer_finished(self, image: ImageResult, layer: LayerResult) -> None:
        return None

    def retrying(self, what: str, error: PullVerifyError, delay: float) -> None:
        return None


def plain_http_allowed(reference: Reference, options: TransportOptions) -> bool:
    """Loopback hosts and hosts named with --insecure may be spoken to without TLS."""
    return reference.is_loopback or reference.registry in options.insecure_hosts


async def connect(
    session: aiohttp.ClientSession, reference: Reference, options: PullOptions
) -> RegistryClient:
    """A client for the reference's registry, its scheme settled and the host pinged.

    Like docker, a host that may use plain HTTP is tried over HTTPS first; it falls back
    only when the server does not speak TLS at all, never past a certificate it distrusts.
    """
    # Without --username, the docker config's credentials, looked up on the first challenge.
    lookup = None if options.credentials else partial(docker_credentials, reference.registry)
    authenticator = Authenticator(
        reference.api_host,
        options.credentials,
        lookup=lookup,
        plain_http=plain_http_allowed(reference, options.transport),
    )
    client = RegistryClient(
        session, reference.api_host, authenticator=authenticator, retry=options.retry
    )
    try:
        if not plain_http_allowed(reference, options.transport):
            await client.ping()
            return client
        probe = RegistryClient(
            session, reference.api_host, authenticator=authenticator, retry=RetryPolicy.none()
        )
        try:
            await probe.ping()
        except CertificateError:
            raise
        except NetworkError:
            # Only a server that does not speak TLS at all gets plain HTTP; one that answered
            # over TLS (even with an error) is a TLS server.
            client.scheme = "http"
            await client.ping()
    except RegistryError as exc:
        if exc.status != 400 or client.scheme != "https":
            raise
        # nginx answers 400 over TLS when ssl_verify_client wants a certificate not sent.
        raise RegistryError(
            f"{exc.message}; if the server wants a TLS client certificate, put client.cert and "
            f"client.key in certs.d/{reference.api_host}/ or use --cert-dir",
            status=400,
        ) from exc
    return client


async def iter_chunks(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body as the socket delivered it. Joining reads into bigger chunks cost a copy of
    every byte and fragmented the heap (~15 MiB more peak RSS for four layers)."""
    while True:
        data, end_of_http_chunk = await content.readchunk()
        if data:
            yield data
        elif not end_of_http_chunk:
            return


@contextmanager
def naming(subject: str) -> Iterator[None]:
    """Errors of the parsers inside name ``subject``: parsers see bytes, not references."""
    try:
        yield
    except InvalidContent as exc:
        raise InvalidContent(
            f"{subject}: {exc.message}", subject=subject, expected=exc.expected, actual=exc.actual
        ) from exc
    except UnsupportedContent as exc:
        raise UnsupportedContent(f"{subject}: {exc.message}", status=exc.status) from exc


def check_content_range(header: str | None, offset: int, size: int, what: str) -> None:
    """A 206 must start exactly where we asked; anything else would splice wrong bytes."""
    expected = f"bytes {offset}-{size - 1}/{size}"
    if header is None:
        raise RegistryError(f"{what}: partial response without Content-Range")
    try:
        unit, _, rest = header.strip().partition(" ")
        span, _, total = rest.partition("/")
        start_text, _, end_text = span.partition("-")
        start, end = int(start_text), int(end_text)
        total_ok = total == "*" or int(total) == size
    except ValueError:
        raise RegistryError(f"{what}: malformed Content-Range {header!r}") from None
    if unit != "bytes" or start != offset or end < start or end >= size or not total_ok:
        raise RegistryError(
            f"{what}: asked for bytes from {offset}, got Content-Range "
            f"{header!r} (expected {expected})"
        )


async def fetch_manifest(
    client: RegistryClient, reference: Reference, checks: list[Check]
) -> tuple[FetchedManifest, Digest]:
    """A reference's manifest exactly as served, checked against its pin and header.

    With both a tag and a digest the tag is asked for: the pin then also asserts that the
    tag still names that manifest (docker would silently ignore the tag).
    """
    fetched = await client.get_manifest(
        reference.repository, reference.tag or reference.manifest_ref
    )
    digest = check_manifest(
        fetched.data,
        subject=f"manifest {reference}",
        pinned=reference.digest,
        content_digest=fetched.content_digest,
        checks=checks,
    )
    return fetched, digest


async def fetch_child(
    client: RegistryClient,
    repository: str,
    entry: Descriptor,
    subject: str,
    checks: list[Check],
) -> FetchedManifest:
    """An index entry's manifest, checked against the digest and size the index gave."""
    fetched = await client.get_manifest(repository, str(entry.digest))
    check_child(entry, fetched.data, subject=subject, checks=checks)
    return fetched


def parse_image_manifest(fetched: FetchedManifest, subject: str) -> ImageManifest:
    """A verified child manifest as an image manifest; an index inside an index is refused."""
    with naming(subject):
        manifest = parse_manifest(fetched.data, fetched.content_type)
    if not isinstance(manifest, ImageManifest):
        raise UnsupportedContent(f"{subject}: nested indexes are not supported")
    return manifest


async def fetch_config(
    client: RegistryClient, repository: str, descriptor: Descriptor, checks: list[Check]
) -> bytes:
    """A config blob whole (bounded), checked against its descriptor."""
    subject = f"config {descriptor.digest}"
    check_config_size(descriptor, subject=subject)
    data = await client.get_blob_bytes(repository, descriptor.digest, descriptor.size)
    check_config(descriptor, data, subject=subject, checks=checks)
    return data


class Puller:
    """Verifies images of one registry through one client, writing to one sink."""

    def __init__(
        self,
        client: RegistryClient,
        options: PullOptions,
        *,
        sink: BlobSink | None = None,
        progress: Progress | None = None,
        crowd: Crowd | None = None,
    ) -> None:
        self.client = client
        self.options = options
        self.sink: BlobSink = sink or DiscardSink()
        self.progress: Progress = progress or NoProgress()
        self._jobs = anyio.CapacityLimiter(max(1, options.jobs))
        self._cpu = anyio.CapacityLimiter(max(1, options.cpu_threads or usable_cores()))
        # Layers left to verify: one thread each while they outnumber the cores (feed.py).
        self._crowd = crowd or Crowd(cores=options.cpu_threads or None, jobs=options.jobs)

    async def pull(self, reference: Reference) -> PullResult:
        result = PullResult(reference=str(reference))
        try:
            await self._pull(reference, result)
        except PullVerifyError as exc:
            result.error = exc
        rate = self.client.rate_limit
        if rate is not None:
            result.rate_limit = {"limit": rate.limit, "remaining": rate.remaining}
        return result

    async def _pull(self, reference: Reference, result: PullResult) -> None:
        repo = reference.repository
        fetched, digest = await fetch_manifest(self.client, reference, result.checks)
        result.manifest_digest = digest
        with naming(f"manifest {reference}"):
            manifest = parse_manifest(fetched.data, fetched.content_type)
        result.media_type = manifest.media_type
        top = Descriptor(manifest.media_type, digest, len(fetched.data))
        if isinstance(manifest, ImageManifest):
            image = ImageResult(
                reference=str(reference), manifest_digest=digest, media_type=manifest.media_type
            )
            result.images.append(image)
            await self._verify_image(reference, manifest, image)
            if image.ok:
                await self.sink.put_verified(top, fetched.data)
                await self.sink.finish_image(str(reference), top)
            return
        entries = self._select(manifest)
        async with anyio.create_task_group() as tg:
            for entry in entries:
                image = ImageResult(
                    reference=f"{reference.registry}/{repo}@{entry.digest}",
                    platform=entry.platform,
                    manifest_digest=entry.digest,
                    media_type=entry.media_type,
                )
                result.images.append(image)
                tg.start_soon(self._verify_child, reference, entry, image)
        if result.ok:
            await self.sink.put_verified(top, fetched.data)
            await self.sink.finish_image(str(reference), top)

    def _select(self, index: ImageIndex) -> list[Descriptor]:
        if self.options.all_platforms:
            entries = [d for d in index.images() if d.platform is not None]
            if not entries:
                raise UnsupportedContent("the index lists no platform images")
            return entries
        return [choose_platform(index, self.options.platform or host_platform())]

    async def _verify_child(
        self, reference: Reference, entry: Descriptor, image: ImageResult
    ) -> None:
        """One platform's manifest, named by digest in the index."""
        try:
            subject = f"manifest {image.reference}"
            fetched = await fetch_child(
                self.client, reference.repository, entry, subject, image.checks
            )
            manifest = parse_image_manifest(fetched, subject)
            await self._verify_image(reference, manifest, image)
            if image.ok:
                await self.sink.put_verified(entry, fetched.data)
        except PullVerifyError as exc:
            image.error = exc

    async def _verify_image(
        self, reference: Reference, manifest: ImageManifest, image: ImageResult
    ) -> None:
        try:
            await self._verify_image_inner(reference, manifest, image)
        except PullVerifyError as exc:
            image.error = exc

    async def _verify_image_inner(
        self, reference: Reference, manifest: ImageManifest, image: ImageResult
    ) -> None:
        repo = reference.repository
        config_desc = manifest.config
        subject = f"config {config_desc.digest}"
        data = await fetch_config(self.client, repo, config_desc, image.checks)
        image.image_id = config_desc.digest
        with naming(subject):
            config = parse_config(data)
        image.platform = image.platform or config.platform
        image.created = config.created
        layers = manifest.layers
        count_ok = len(config.diff_ids) == len(layers)
        image.checks.append(
            Check("diff-id-count", subject, str(len(layers)), str(len(config.diff_ids)), count_ok)
        )
        if not count_ok:
            raise InvalidContent(
                f"{subject}: config lists {len(config.diff_ids)} diff_ids for {len(layers)} layers",
                subject=subject,
                expected=str(len(layers)),
                actual=str(len(config.diff_ids)),
            )
        image.layers = [
            LayerResult(index=i, descriptor=d, expected_diff_id=config.diff_ids[i])
            for i, d in enumerate(layers)
        ]
        self.progress.image_started(image)
        self._crowd.unfinished += len(image.layers)
        async with anyio.create_task_group() as tg:
            for layer in image.layers:
                tg.start_soon(self._layer_task, repo, image, layer)
        if image.ok:
            await self.sink.put_verified(config_desc, data)

    async def _layer_task(self, repo: str, image: ImageResult, layer: LayerResult) -> None:
        try:
            await self._verify_layer(repo, image, layer)
        finally:
            self._crowd.unfinished -= 1

    async def _verify_layer(self, repo: str, image: ImageResult, layer: LayerResult) -> None:
        async with self._jobs:
            self.progress.layer_started(image, layer)
            try:
                await self.fetch_layer(repo, layer)
            except PullVerifyError as exc:
                layer.error = exc
            desc, verdict = layer.descriptor, layer.verdict
            subject = f"layer {desc.digest}"
            if verdict is not None:
                # A layer taken from a store was checked when it was stored, not now: say so.
                prefix = "stored-" if layer.skipped else ""
                image.checks.append(
                    Check(
                        f"{prefix}layer-digest",
                        subject,
                        str(desc.digest),
                        str(verdict.digest),
                        True,
                    )
                )
                image.checks.append(
                    Check(
                        f"{prefix}diff-id",
                        subject,
                        str(layer.expected_diff_id),
                        str(verdict.diff_id),
                        True,
                    )
                )
            elif layer.error is not None and getattr(layer.error, "expected", None):
                err = layer.error
                image.checks.append(
                    Check(
                        err.kind,
                        subject,
                        str(getattr(err, "expected", "")),
                        str(getattr(err, "actual", "")),
                        False,
                    )
                )
            self.progress.layer_finished(image, layer)

    async def fetch_layer(self, repo: str, layer: LayerResult) -> None:
        """Fetch and verify one layer blob into ``layer.verdict`` (through the sink), with
        Range resume and retries; raises the layer's error."""
        desc = layer.descriptor
        subject = f"layer {desc.digest}"
        compression = layer_compression(desc.media_type)
        if compression is None:
            raise UnsupportedContent(f"{subject}: unknown layer media type {desc.media_type!r}")
        stored = await self.sink.has_verified(desc, layer.expected_diff_id)
        if stored is not None:
            layer.verdict = stored
            layer.skipped = "Already verified in store"
            return

        writer = await self.sink.open_blob(desc)

        def new_verifier() -> LayerVerifier:
            return LayerVerifier(
                digest=desc.digest,
                size=desc.size,
                compression=compression,
                diff_id=layer.expected_diff_id,
                subject=subject,
                max_uncompressed=self.options.max_layer_size,
                on_uncompressed=writer.on_uncompressed,
            )

        try:
            verifier = new_verifier()
            attempts = Attempts(self.options.retry, on_retry=self._on_retry(subject))
            while True:
                try:
                    verifier = await self._stream(repo, layer, verifier, new_verifier, writer)
                    break
                except (aiohttp.ClientError, TimeoutError) as exc:
                    await attempts.wait(translate(exc, subject))
                except PullVerifyError as exc:
                    await attempts.wait(exc)
            layer.attempts = attempts.tries
            layer.verdict = await anyio.to_thread.run_sync(verifier.finish, limiter=self._cpu)
            await writer.commit(layer.verdict)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await writer.abort()
            raise

    def _on_retry(self, subject: str) -> Callable[[PullVerifyError, float], None]:
        def note(error: PullVerifyError, delay: float) -> None:
            self.progress.retrying(subject, error, delay)

        return note

    async def _stream(
        self,
        repo: str,
        layer: LayerResult,
        verifier: LayerVerifier,
        new_verifier: Callable[[], LayerVerifier],
        writer: BlobWriter,
    ) -> LayerVerifier:
        """One request for the rest of a blob, fed through the verifier as it arrives."""
        desc = layer.descriptor
        offset = verifier.bytes_read
        if offset and offset == desc.size:
            return verifier  # every byte arrived; only the verdict is left
        async with self.client.open_blob(repo, desc.digest, offset=offset) as resp:
            if offset and resp.status == 200:
                # The server ignored our Range: start again from byte 0 with fresh state.
                verifier = new_verifier()
                await writer.restart()
            elif offset:
                check_content_range(
                    resp.headers.get("Content-Range"), offset, desc.size, f"layer {desc.digest}"
                )
                layer.resumed_at.append(offset)
            elif resp.status == 206:
                raise RegistryError(f"layer {desc.digest}: partial content for a full request")
            # Digest, inflate and diff_id run in worker threads (feed.py) while the loop reads on.
            feeder = ThreadedFeeder(verifier, name=f"layer{layer.index}", crowd=self._crowd)
            async with feeder:
                async for chunk in iter_chunks(resp.content):
                    await feeder.feed(chunk)
                    await writer.write(chunk)
                    self.progress.layer_advanced(layer, len(chunk))
        return verifier


async def pull_verify(
    reference: Reference,
    options: PullOptions,
    *,
    sink: BlobSink | None = None,
    progress: Progress | None = None,
) -> PullResult:
    """Verify one reference end to end in a session of its own."""
    try:
        async with open_session(options.transport) as session:
            client = await connect(session, reference, options)
            return await Puller(client, options, sink=sink, progress=progress).pull(reference)
    except PullVerifyError as exc:
        return PullResult(reference=str(reference), error=exc)
