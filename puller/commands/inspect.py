"""``puller inspect REF``: what an image is, every number of it verified.

Layer: the edge. Remote: the reference runs through the real verify pipeline (``Puller``),
which streams every layer once, so the uncompressed sizes and diff_ids printed are the
ones computed, not the ones claimed. ``--local``: the same facts read from the local store
(``puller.store``), whose blobs were verified when they were written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    fetch_manifest,
    make_connection,
    parse_ref,
    run_verb,
    with_client,
)
from puller.errors import PullVerifyError

if TYPE_CHECKING:
    from puller.reference import Reference
    from puller.registry import RegistryClient
    from puller.report import PullResult


def _layer_doc(
    media_type: str, digest: str, diff_id: str | None, size: int, uncompressed: int | None
) -> dict[str, Any]:
    return {
        "media_type": media_type,
        "digest": digest,
        "diff_id": diff_id,
        "compressed_size": size,
        "uncompressed_size": uncompressed,
    }


def _error_doc(error: PullVerifyError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    doc: dict[str, Any] = {"kind": error.kind, "message": error.message}
    doc["expected"] = getattr(error, "expected", None)
    doc["actual"] = getattr(error, "actual", None)
    return doc


def remote_doc(result: PullResult, platforms: list[str]) -> dict[str, Any]:
    """The inspect document of a verified (or failed) pull."""
    from puller.report import image_fields

    images = []
    for image in result.images:
        layers = [
            _layer_doc(
                layer.descriptor.media_type,
                str(layer.descriptor.digest),
                str(layer.verdict.diff_id) if layer.verdict else None,
                layer.descriptor.size,
                layer.verdict.uncompressed_size if layer.verdict else None,
            )
            for layer in image.layers
        ]
        images.append({**image_fields(image), "layers": layers})
    return {
        "reference": result.reference,
        "digest": str(result.manifest_digest) if result.manifest_digest else None,
        "media_type": result.media_type,
        "platforms": platforms,
        "verified": result.ok,
        "images": images,
        "error": _error_doc(result.worst_error),
    }


def render(doc: dict[str, Any]) -> list[str]:
    from puller.report import human_size

    def size(n: int | None) -> str:
        return "?" if n is None else f"{n} bytes ({human_size(n)})"

    lines = [
        f"Reference:   {doc['reference']}",
        f"Digest:      {doc['digest']}",
        f"Media type:  {doc['media_type']}",
    ]
    if doc["platforms"]:
        lines.append(f"Platforms:   {', '.join(doc['platforms'])}")
    for image in doc["images"]:
        lines.append("")
        lines.append(f"Platform:    {image['platform']}")
        if image["digest"] != doc["digest"]:
            lines.append(f"  Manifest:    {image['digest']} ({image['media_type']})")
        lines.append(f"  Image ID:    {image['image_id']}")
        lines.append(f"  Created:     {image['created'] or '?'}")
        lines.append(f"  Compressed:  {size(image['compressed_size'])}")
        lines.append(f"  Uncompressed: {size(image['uncompressed_size'])}")
        lines.append(f"  Layers:      {len(image['layers'])}")
        for i, layer in enumerate(image["layers"]):
            lines.append(f"  [{i}] {layer['media_type']}")
            lines.append(f"      digest:       {layer['digest']}")
            lines.append(f"      diff_id:      {layer['diff_id'] or '?'}")
            lines.append(f"      compressed:   {size(layer['compressed_size'])}")
            lines.append(f"      uncompressed: {size(layer['uncompressed_size'])}")
    return lines


async def inspect_remote(
    client: RegistryClient, reference: Reference, options: Any
) -> tuple[PullResult, list[str]]:
    from puller.manifest import ImageIndex, parse_manifest
    from puller.pull import Puller

    data, digest = await fetch_manifest(client, reference)
    top = parse_manifest(data)
    platforms = (
        [str(d.platform) for d in top.images() if d.platform] if isinstance(top, ImageIndex) else []
    )
    # Pin what we just read: if the tag moves meanwhile, the pull says so instead of
    # describing another image than the platforms listed.
    pinned = reference if reference.digest else reference.with_digest(digest)
    result = await Puller(client, options).pull(pinned)
    result.reference = str(reference)
    return result, platforms


# -- --local ---------------------------------------------------------------------------------


def local_doc(store: Path, reference: Reference) -> dict[str, Any]:
    """The same document from the store: blobs re-hashed as read, layer facts as recorded."""
    from puller.errors import DiffIDMismatch, InvalidContent, NotFound
    from puller.imageconfig import MAX_CONFIG_BYTES, parse_config
    from puller.manifest import MAX_MANIFEST_BYTES, ImageManifest, parse_manifest
    from puller.store import read_blob, read_layer_record, read_store, stored_size

    wanted = str(reference)
    matches = [
        image
        for image in read_store(store)
        if image.name == wanted
        or (reference.digest is not None and reference.digest in (image.source_digest,))
    ]
    if not matches:
        raise NotFound(f"{wanted}: not in the store {store}")
    images = []
    for stored in matches:
        manifest = parse_manifest(read_blob(store, stored.descriptor.digest, MAX_MANIFEST_BYTES))
        if not isinstance(manifest, ImageManifest):
            continue
        config_data = read_blob(store, manifest.config.digest, MAX_CONFIG_BYTES)
        config = parse_config(config_data)
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidContent(
                f"stored config {manifest.config.digest}: {len(config.diff_ids)} diff_ids for "
                f"{len(manifest.layers)} layers"
            )
        layers = []
        # Layers are not re-hashed here: "recorded" says the store verified each one when it
        # was written and still holds it whole; `pull-verify --store DIR --reverify` re-hashes.
        all_recorded = True
        for i, desc in enumerate(manifest.layers):
            diff_id = config.diff_ids[i]
            record = read_layer_record(store, desc.digest)
            if record is not None and record.verdict.diff_id != diff_id:
                raise DiffIDMismatch(
                    f"stored layer {desc.digest}: recorded diff_id {record.verdict.diff_id} "
                    f"is not the config's {diff_id}",
                    subject=f"stored layer {desc.digest}",
                    expected=str(diff_id),
                    actual=str(record.verdict.diff_id),
                )
            if record is None or not record.vouches_for(
                desc, diff_id, stored_size(store, desc.digest)
            ):
                all_recorded = False
            uncompressed = record.verdict.uncompressed_size if record else None
            layers.append(
                _layer_doc(
                    desc.media_type,
                    str(desc.digest),
                    str(diff_id),
                    desc.size,
                    uncompressed,
                )
            )
        sizes = [layer["uncompressed_size"] for layer in layers]
        images.append(
            {
                "platform": str(config.platform),
                "digest": str(stored.manifest_digest or stored.descriptor.digest),
                "media_type": manifest.media_type,
                "image_id": str(manifest.config.digest),
                "created": config.created,
                "compressed_size": sum(d.size for d in manifest.layers),
                "uncompressed_size": None if None in sizes else sum(sizes),
                "verified": all_recorded,
                "layers": layers,
            }
        )
    first = matches[0]
    return {
        "reference": wanted,
        "digest": str(first.source_digest or first.descriptor.digest),
        "media_type": first.descriptor.media_type,
        "platforms": [image["platform"] for image in images] if len(images) > 1 else [],
        "verified": all(image["verified"] for image in images),
        "images": images,
        "error": None,
    }


def inspect_command(
    reference: Annotated[str, typer.Argument(help="Image reference.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    local: Annotated[
        bool, typer.Option("--local", help="Read the local store instead of the registry.")
    ] = False,
    store: Annotated[
        Path | None,
        typer.Option(help="The store for --local (default: $XDG_DATA_HOME/pull-verify)."),
    ] = None,
    all_platforms: Annotated[
        bool, typer.Option("--all-platforms", help="Every platform of an index.")
    ] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Layers downloaded at once.")] = 4,
    platform: PlatformOpt = None,
    username: UsernameOpt = None,
    password_stdin: PasswordStdinOpt = False,
    insecure: InsecureOpt = None,
    ca_cert: CaCertOpt = None,
    tls_verify: TlsVerifyOpt = True,
) -> None:
    """Describe an image: digest, media type, platforms, image ID, created, and each layer
    with its digest, diff_id and compressed and uncompressed size (all verified)."""
    ref = parse_ref(reference)
    if local:
        from puller.store import default_store_path

        try:
            doc = local_doc(store or default_store_path(), ref)
        except PullVerifyError as exc:
            raise fail(exc) from exc
        code = 0
    else:
        conn = make_connection(username, password_stdin, insecure, ca_cert, tls_verify, platform)
        options = build(conn, jobs=jobs, all_platforms=all_platforms)
        result, platforms = run_verb(
            lambda: with_client(ref, options, lambda c: inspect_remote(c, ref, options))
        )
        doc = remote_doc(result, platforms)
        code = result.exit_code
    if json_output:
        typer.echo(json.dumps(doc, indent=2))
    else:
        for line in render(doc):
            typer.echo(line)
    if code:
        worst = doc["error"]
        err(f"puller: {worst['message'] if worst else 'not verified'}")
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    from puller.cli import EXIT_CODE_HELP

    app.command(name="inspect", epilog=EXIT_CODE_HELP)(inspect_command)
