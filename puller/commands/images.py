"""``puller images``: the local store listed like ``docker images``.

Layer: the edge (reads the store's files; no network). Rows come from the store's
``index.json`` and the config blobs it names; the clock is passed in, so the CREATED column
can be tested.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from puller.errors import PullVerifyError

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class ImageRow:
    repository: str
    tag: str
    image_id: str  # the config digest
    digest: str | None  # what the registry served: the index digest for an index pull
    created: datetime | None
    size: int | None  # uncompressed, as verified
    platform: str | None
    reference: str | None


def human_duration(seconds: float) -> str:
    """Elapsed time in docker's words: ``About an hour``, ``3 days``, ``2 months``."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        n = int(seconds)
        return "1 second" if n == 1 else f"{n} seconds"
    minutes = int(seconds // 60)
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = int(seconds // 3600)
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def human_created(created: datetime | None, now: datetime) -> str:
    if created is None:
        return "N/A"
    return human_duration(max(0.0, (now - created).total_seconds())) + " ago"


def docker_size(n: int | None) -> str:
    """Decimal units with three significant digits, as ``docker images`` prints them."""
    if n is None:
        return "N/A"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g}{unit}"
        size /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def parse_created(text: str | None) -> datetime | None:
    """RFC 3339 from a config; None when absent or unreadable (shown as N/A)."""
    if not text:
        return None
    cleaned = text.strip().replace("Z", "+00:00")
    # Go writes nanoseconds; Python takes at most microseconds.
    if "." in cleaned:
        head, _, rest = cleaned.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        cleaned = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        value = datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def read_rows(store: Path) -> list[ImageRow]:
    """One row per named image in the store, newest first (as docker sorts)."""
    from puller.imageconfig import MAX_CONFIG_BYTES, parse_config
    from puller.manifest import MAX_MANIFEST_BYTES, ImageManifest, parse_manifest
    from puller.store import read_blob, read_store

    rows = []
    for image in read_store(store):
        manifest = parse_manifest(read_blob(store, image.descriptor.digest, MAX_MANIFEST_BYTES))
        if not isinstance(manifest, ImageManifest):
            continue
        config = parse_config(read_blob(store, manifest.config.digest, MAX_CONFIG_BYTES))
        ref = image.reference
        if ref is not None:
            familiar = ref.familiar.split("@", 1)[0]
            repository = familiar.rsplit(":", 1)[0] if ref.tag is not None else familiar
            tag = ref.tag or "<none>"
        else:
            repository, tag = "<none>", image.ref_name or "<none>"
        digest = image.source_digest or image.manifest_digest or image.descriptor.digest
        platform = image.descriptor.platform or config.platform
        rows.append(
            ImageRow(
                repository=repository,
                tag=tag,
                image_id=str(manifest.config.digest),
                digest=str(digest),
                created=parse_created(config.created),
                size=image.uncompressed_size,
                platform=str(platform) if platform else None,
                reference=image.name,
            )
        )
    oldest = datetime.min.replace(tzinfo=UTC)
    rows.sort(key=lambda r: (r.repository, r.tag))
    rows.sort(key=lambda r: r.created or oldest, reverse=True)
    return rows


def render_table(rows: Sequence[ImageRow], *, now: datetime, digests: bool) -> list[str]:
    headers = ["REPOSITORY", "TAG"]
    if digests:
        headers.append("DIGEST")
    headers += ["IMAGE ID", "CREATED", "SIZE"]
    table = [headers]
    for row in rows:
        cells = [row.repository, row.tag]
        if digests:
            cells.append(row.digest or "<none>")
        image_id = row.image_id.partition(":")[2][:12]
        cells += [image_id, human_created(row.created, now), docker_size(row.size)]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    # Columns three spaces apart, as docker's tabwriter lays them out.
    return ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


def rows_json(rows: Sequence[ImageRow]) -> list[dict[str, Any]]:
    return [
        {
            "repository": r.repository,
            "tag": r.tag,
            "reference": r.reference,
            "image_id": r.image_id,
            "digest": r.digest,
            "created": r.created.isoformat().replace("+00:00", "Z") if r.created else None,
            "size": r.size,
            "platform": r.platform,
        }
        for r in rows
    ]


def list_images(
    store: Path, *, digests: bool, json_output: bool, now: datetime, out: Callable[[str], None]
) -> None:
    rows = read_rows(store)
    if json_output:
        out(json.dumps(rows_json(rows), indent=2))
        return
    for line in render_table(rows, now=now, digests=digests):
        out(line)


def images_command(
    store: Annotated[
        Path | None,
        typer.Option(help="The store to list (default: $XDG_DATA_HOME/pull-verify)."),
    ] = None,
    digests: Annotated[
        bool, typer.Option("--digests", help="Show the digest each image was pulled by.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """List the images in the local store: repository, tag, image ID, created, size."""
    from puller.store import default_store_path

    try:
        list_images(
            store or default_store_path(),
            digests=digests,
            json_output=json_output,
            now=datetime.now(UTC),
            out=typer.echo,
        )
    except PullVerifyError as exc:
        typer.echo(f"puller images: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from exc


def register(app: typer.Typer) -> None:
    app.command(name="images")(images_command)
