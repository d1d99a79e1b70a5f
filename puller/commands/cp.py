"""``puller cp REF:/path DEST``: a file or directory of an image's merged filesystem.

Layer: the edge, plus ``ExtractSink``, a BlobSink fed by the verify pipeline (``Puller``).
The pipeline streams each layer through its verifier, whose one inflate also hands the
tar to the sink (``BlobWriter.on_uncompressed``); the sink applies it to a staging
directory beside DEST (``puller.extract``). Layers must be applied in order, so the pull
runs one layer at a time (``jobs=1``) and the sink checks the order. Nothing becomes
visible until every layer and the manifest verified: then one rename puts the source in
place; on any failure the staging directory is removed.
"""

from __future__ import annotations

import shutil
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from puller.commands.options import (
    CaCertOpt,
    InsecureOpt,
    PasswordStdinOpt,
    PlatformOpt,
    TlsVerifyOpt,
    UsernameOpt,
)
from puller.commands.registry_verbs import (
    build,
    err,
    fail,
    make_connection,
    parse_ref,
    run_verb,
)
from puller.errors import IntegrityError, PullVerifyError, UsageError, write_failure

if TYPE_CHECKING:
    from puller.digest import Digest
    from puller.extract import Extraction
    from puller.manifest import Descriptor
    from puller.pull import Progress, PullOptions
    from puller.reference import Reference
    from puller.report import ImageResult, LayerResult, PullResult
    from puller.sink import BlobWriter
    from puller.verify import LayerVerdict


class _LayerWriter:
    """Feeds one layer's tar, as the verifier inflates it, to the extraction."""

    def __init__(self, sink: ExtractSink, subject: str) -> None:
        self._sink = sink
        self._subject = subject
        self._problem: PullVerifyError | None = None
        self.on_uncompressed = self._extract
        sink.extraction.begin_layer(subject)

    def _extract(self, data: bytes) -> None:
        # Runs in the verifier's hash thread, after --max-layer-size was enforced.
        if self._problem is not None:
            return
        try:
            self._sink.extraction.feed(data)
        except IntegrityError as exc:
            # Not raised yet: if the bytes are corrupt, the digest mismatch is the real story.
            self._problem = exc
        except OSError as exc:
            self._problem = write_failure(exc.filename or self._sink.extraction.staging, exc)

    async def write(self, chunk: bytes) -> None:
        return None  # the compressed bytes are not kept; their tar arrives via _extract

    async def restart(self) -> None:
        self._problem = None
        self._sink.extraction.restart_layer()

    async def commit(self, verdict: LayerVerdict) -> None:
        # Called only after the layer's digest, size and diff_id checked out.
        if self._problem is not None:
            raise self._problem
        self._sink.extraction.end_layer()
        self._sink.applied += 1

    async def abort(self) -> None:
        self._sink.extraction.discard()


class ExtractSink:
    """A BlobSink that applies layers, in order, to an ``Extraction``; also a Progress relay."""

    def __init__(self, extraction: Extraction, progress: Progress) -> None:
        self.extraction = extraction
        self.progress = progress
        self.applied = 0  # layers applied so far
        self._current: LayerResult | None = None

    # -- BlobSink ---------------------------------------------------------------------------

    async def has_verified(
        self, descriptor: Descriptor, diff_id: Digest | None
    ) -> LayerVerdict | None:
        return None  # every layer's tar is needed, so every layer streams

    async def open_blob(self, descriptor: Descriptor) -> BlobWriter:
        from puller.errors import UnsupportedContent

        current = self._current
        if current is None or current.descriptor != descriptor or current.index != self.applied:
            raise UnsupportedContent(
                f"layer {descriptor.digest}: layers did not arrive in order; cannot extract"
            )
        return _LayerWriter(self, f"layer {descriptor.digest}")

    async def put_verified(self, descriptor: Descriptor, data: bytes) -> None:
        return None

    async def finish_image(self, reference: str, manifest: Descriptor) -> None:
        return None

    # -- Progress (relayed; layer_started says which layer opens next) ------------------------

    def image_started(self, image: ImageResult) -> None:
        self.progress.image_started(image)

    def layer_started(self, image: ImageResult, layer: LayerResult) -> None:
        self._current = layer
        self.progress.layer_started(image, layer)

    def layer_advanced(self, layer: LayerResult, nbytes: int) -> None:
        self.progress.layer_advanced(layer, nbytes)

    def layer_finished(self, image: ImageResult, layer: LayerResult) -> None:
        self.progress.layer_finished(image, layer)

    def retrying(self, what: str, error: PullVerifyError, delay: float) -> None:
        self.progress.retrying(what, error, delay)


def split_source(text: str) -> tuple[str, str]:
    """``REF:/path`` -> (REF, /path); the path starts at the first ``:/``."""
    ref, sep, path = text.partition(":/")
    if not sep or not ref:
        raise UsageError(f"expected REF:/path, got {text!r}")
    return ref, "/" + path


def cp_command(
    source: Annotated[str, typer.Argument(help="REF:/path in the image.")],
    dest: Annotated[str, typer.Argument(help="Existing directory to copy into, or a new name.")],
    platform: PlatformOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing on success.")] = False,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    insecure: InsecureOpt = None,
    ca_cert: CaCertOpt = None,
    tls_verify: TlsVerifyOpt = True,
) -> None:
    """Copy a file or directory out of an image, verified layer by layer, like `docker cp`.

    If DEST is an existing directory the source goes inside it; otherwise DEST is its new
    name. Nothing appears at DEST unless every layer verified.
    """
    from puller.extract import Extraction, make_staging, normalize_source, plan_destination

    try:
        ref_text, path = split_source(source)
        wanted = normalize_source(path)
        final = plan_destination(dest, wanted)
    except PullVerifyError as exc:
        raise fail(exc) from exc
    reference = parse_ref(ref_text)
    conn = make_connection(username, password_stdin, insecure, ca_cert, tls_verify, platform)
    # One layer at a time: layer N+1 applies on top of layer N.
    options = build(conn, jobs=1)
    try:
        staging = make_staging(final)
    except OSError as exc:
        raise fail(write_failure(final.parent, exc)) from exc
    try:
        extraction = Extraction(staging / "rootfs", wanted)
        extraction.staging.mkdir()
        result = run_verb(lambda: _pull(reference, options, extraction, quiet))
        worst = result.worst_error
        if worst is not None:
            raise fail(worst)
        if not result.ok:
            raise fail(PullVerifyError(f"{reference}: not verified; nothing copied"))
        try:
            from puller.extract import install

            install(extraction.finalize(), final)
        except PullVerifyError as exc:
            raise fail(exc) from exc
        except OSError as exc:
            raise fail(write_failure(final, exc)) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stats = extraction.stats
    if stats.unresolved_hardlinks:
        err(
            f"warning: {len(stats.unresolved_hardlinks)} hardlink(s) point outside {path} and "
            f"were not copied: {', '.join('/' + p for p in stats.unresolved_hardlinks[:5])}"
        )
    if not quiet:
        err(
            f"Copied {path} from {reference} to {final} ({stats.files} files, "
            f"{stats.directories} directories, {stats.symlinks} symlinks, "
            f"{stats.hardlinks} hardlinks; every layer verified)"
        )


async def _pull(
    reference: Reference, options: PullOptions, extraction: Extraction, quiet: bool
) -> PullResult:
    from rich.console import Console

    from puller.cli import LinePrinter
    from puller.progress import open_progress
    from puller.pull import NoProgress, Puller, connect
    from puller.transport import open_session

    # Progress goes to stderr: stdout stays free, as with docker cp.
    fallback: Progress = NoProgress() if quiet else LinePrinter(err)
    terminal = not quiet and sys.stderr.isatty()
    with open_progress(fallback, terminal=terminal, console=Console(stderr=True)) as progress:
        sink = ExtractSink(extraction, progress)
        async with open_session(options.transport) as session:
            client = await connect(session, reference, options)
            return await Puller(client, options, sink=sink, progress=sink).pull(reference)


def register(app: typer.Typer) -> None:
    from puller.cli import EXIT_CODE_HELP

    app.command(name="cp", epilog=EXIT_CODE_HELP)(cp_command)
