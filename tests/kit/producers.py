"""Images made and read by independent tools: umoci builds, skopeo pushes and inspects.

Layer: test kit, runs subprocesses and talks to loopback registries through them.

These images do not come from ``tests.kit.images``: a bug shared by our builder and our
puller cannot make them agree. Facts measured with the Debian packages (umoci 0.4.7,
skopeo 1.9.3), running as root:

- ``umoci unpack``/``repack`` work as root without ``--rootless``.
- umoci writes gzip layers; skopeo 1.9.3 recompresses to zstd with
  ``--dest-compress-format zstd`` (OCI only: ``--format v2s2`` with zstd layers fails,
  "zstd compression is not supported for docker images").
- skopeo reuses blobs it has seen in the destination registry (its blob-info cache in
  /var/lib/containers/cache), so a direct zstd push may still upload the gzip layer. For
  zstd we therefore recompress into a fresh layout first and push with
  ``--preserve-digests``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from tests.kit.client import require_loopback
from tests.kit.registry import require_binary

UMOCI = "/usr/bin/umoci"
SKOPEO = "/usr/bin/skopeo"
_TIMEOUT = 120.0


def _run(cmd: Sequence[str], *, what: str) -> subprocess.CompletedProcess[bytes]:
    require_binary(cmd[0])
    try:
        proc = subprocess.run(
            list(cmd), capture_output=True, timeout=_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what}: timed out after {_TIMEOUT:.0f} s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stderr.decode(errors='replace')[-4000:]}"
        )
    return proc


def _check_host(registry_host: str) -> None:
    require_loopback(f"http://{registry_host}/")


def _write_files(rootfs: Path, files: Mapping[str, bytes]) -> None:
    for name, data in files.items():
        target = rootfs / name.lstrip("/")
        if rootfs.resolve() not in target.resolve().parents:
            raise ValueError(f"file name escapes the rootfs: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def umoci_layout(
    workdir: Path,
    tag: str,
    *,
    layers: Sequence[Mapping[str, bytes]],
    cmd: Sequence[str] = ("/bin/app",),
    os: str = "linux",
    arch: str = "amd64",
) -> Path:
    """Build an OCI layout at ``workdir/layout`` with one gzip layer per ``layers`` entry."""
    layout = workdir / "layout"
    bundle = workdir / "bundle"
    if layout.exists():
        raise FileExistsError(f"{layout} exists: umoci_layout needs a fresh workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    image = f"{layout}:{tag}"
    _run([UMOCI, "init", "--layout", str(layout)], what="umoci init")
    _run([UMOCI, "new", "--image", image], what="umoci new")
    for files in layers:
        shutil.rmtree(bundle, ignore_errors=True)
        _run([UMOCI, "unpack", "--image", image, str(bundle)], what="umoci unpack")
        _write_files(bundle / "rootfs", files)
        _run([UMOCI, "repack", "--image", image, str(bundle)], what="umoci repack")
    shutil.rmtree(bundle, ignore_errors=True)
    config_cmd = [UMOCI, "config", "--image", image, "--os", os, "--architecture", arch]
    for arg in cmd:
        config_cmd += ["--config.cmd", arg]
    _run(config_cmd, what="umoci config")
    return layout


def skopeo_copy(
    source: str,
    destination: str,
    *args: str,
    digestfile: Path | None = None,
) -> str | None:
    """``skopeo copy`` with TLS checks off for both sides; return the pushed digest if asked."""
    cmd = [SKOPEO, "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]
    if digestfile is not None:
        cmd += ["--digestfile", str(digestfile)]
    cmd += [*args, source, destination]
    _run(cmd, what="skopeo copy")
    if digestfile is None:
        return None
    return digestfile.read_text().strip()


def umoci_image(
    workdir: Path,
    registry_host: str,
    repo: str,
    tag: str,
    *,
    files: Mapping[str, bytes],
    more_layers: Sequence[Mapping[str, bytes]] = (),
    fmt: Literal["oci", "v2s2"] = "oci",
    compression: Literal["gzip", "zstd"] = "gzip",
    cmd: Sequence[str] = ("/bin/app",),
    arch: str = "amd64",
    creds: tuple[str, str] | None = None,
) -> str:
    """Build an image with umoci and push it with skopeo; return the manifest digest pushed.

    ``fmt="v2s2"`` makes skopeo convert it to Docker schema2. ``compression="zstd"``
    (OCI only) recompresses into a fresh layout and pushes with ``--preserve-digests``.
    """
    _check_host(registry_host)
    if compression == "zstd" and fmt == "v2s2":
        raise ValueError("skopeo cannot write zstd layers in a Docker schema2 image")
    layout = umoci_layout(workdir, tag, layers=[files, *more_layers], cmd=cmd, arch=arch)
    source = f"oci:{layout}:{tag}"
    args: list[str] = []
    if compression == "zstd":
        fresh = workdir / "layout-zstd"
        skopeo_copy(source, f"oci:{fresh}:{tag}", "--dest-compress-format", "zstd")
        source = f"oci:{fresh}:{tag}"
        args.append("--preserve-digests")
    if fmt == "v2s2":
        args += ["--format", "v2s2"]
    if creds is not None:
        args += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    digest = skopeo_copy(
        source,
        f"docker://{registry_host}/{repo}:{tag}",
        *args,
        digestfile=workdir / f"digest-{fmt}-{compression}",
    )
    if digest is None or not digest.startswith("sha256:"):
        raise RuntimeError(f"skopeo wrote no digest for {registry_host}/{repo}:{tag}")
    return digest


def _inspect(
    registry_host: str,
    repo: str,
    reference: str,
    *extra: str,
    creds: tuple[str, str] | None = None,
) -> bytes:
    _check_host(registry_host)
    sep = "@" if reference.startswith("sha256:") else ":"
    cmd = [SKOPEO, "inspect", "--tls-verify=false", *extra]
    if creds is not None:
        cmd += ["--creds", f"{creds[0]}:{creds[1]}"]
    cmd.append(f"docker://{registry_host}/{repo}{sep}{reference}")
    return _run(cmd, what="skopeo inspect").stdout


def skopeo_inspect(
    registry_host: str, repo: str, reference: str, *, creds: tuple[str, str] | None = None
) -> dict[str, Any]:
    """``skopeo inspect`` as JSON (Digest, Architecture, Os, Layers, ...)."""
    doc: dict[str, Any] = json.loads(_inspect(registry_host, repo, reference, creds=creds))
    return doc


def skopeo_inspect_raw(
    registry_host: str, repo: str, reference: str, *, creds: tuple[str, str] | None = None
) -> bytes:
    """The manifest bytes as skopeo receives them (``--raw``)."""
    return _inspect(registry_host, repo, reference, "--raw", creds=creds)


def skopeo_inspect_digest(
    registry_host: str, repo: str, reference: str, *, creds: tuple[str, str] | None = None
) -> str:
    """The manifest digest skopeo sees for ``repo:reference``."""
    digest = skopeo_inspect(registry_host, repo, reference, creds=creds)["Digest"]
    if not isinstance(digest, str):
        raise RuntimeError(f"skopeo inspect gave no Digest for {repo}:{reference}")
    return digest
