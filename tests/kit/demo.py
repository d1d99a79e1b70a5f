"""``make demo``: a real registry on loopback, a generated image in it, ``pull-verify`` on it.

Runs the installed console script, as a user would; keeps the verified image in a local
store and lists it with ``puller images``; then damages one stored byte and runs it again
to show what a failed verification looks like. Stops the registry at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.kit.images import demo_image, push_image
from tests.kit.registry import RegistryConfig, start_registry


def _run(title: str, cmd: list[str]) -> int:
    print(f"\n$ {' '.join(cmd)}    # {title}", flush=True)
    return subprocess.run(cmd, check=False).returncode


def main() -> int:
    bindir = Path(sys.executable).parent
    pull_verify = str(bindir / "pull-verify")
    puller = str(bindir / "puller")
    workdir = Path(tempfile.mkdtemp(prefix="pull-verify-demo-"))
    try:
        with start_registry(RegistryConfig(root=workdir / "registry")) as registry:
            print(f"registry: /usr/bin/docker-registry serving {registry.url}")
            image = demo_image()
            push_image(registry.url, "demo/app", "latest", image)
            push_image(registry.url, "demo/damaged", "latest", image)
            print(
                f"pushed demo/app:latest: {len(image.layers)} layers, "
                f"{sum(layer.blob.size for layer in image.layers) / 1e6:.1f} MB compressed, "
                f"{sum(layer.uncompressed_size for layer in image.layers) / 1e6:.1f} MB "
                "uncompressed (gzip, multi-member gzip, zstd)"
            )
            ref = f"{registry.host}/demo/app:latest"
            good = _run("verify every digest, size and diff_id", [pull_verify, ref])

            # Keep what was verified: a local store (an OCI layout), then list it.
            store = workdir / "store"
            push_image(registry.url, "demo/app", "stable", image)
            kept = _run(
                "verify again, keeping the image in a local store",
                [pull_verify, "--store", str(store), ref],
            )
            again = _run(
                "another tag of the same image: every layer is already in the store",
                [pull_verify, "--store", str(store), f"{registry.host}/demo/app:stable"],
            )
            listed = _run("list the store", [puller, "images", "--store", str(store)])
            good = good or kept or again or listed

            # Same blobs under another name share storage: damage one byte of one layer.
            registry.flip_byte(image.layers[1].digest)
            bad = _run(
                "one byte flipped in the registry's stored layer",
                [pull_verify, "--retries", "0", f"{registry.host}/demo/damaged:latest"],
            )
            print(f"\nexit codes: verified image {good}, damaged image {bad} (1 = integrity)")
            return 0 if (good, bad) == (0, 1) else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
