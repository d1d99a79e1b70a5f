"""The contenders: each one verifies (or copies) one pushed image once and says what it cost.

Layer: benchmark kit (subprocesses, loopback network, files). Every runner returns a
``Sample``: wall time, CPU time (user+sys, children included), peak RSS, and whether the
tool checked what it was meant to. Subprocess costs come from GNU time around the one
child, so nothing else the harness started is counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from isal import igzip_lib

from benchmarks.images import BLOCK, BuiltImage

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

CTR = "/usr/bin/ctr"
CONTAINERD = "/usr/bin/containerd"
SKOPEO = "/usr/bin/skopeo"
CURL = "/usr/bin/curl"
TIME = "/usr/bin/time"


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    cpu: float
    rss_mib: float | None  # None when the number would not mean anything (in-process)
    ok: bool
    note: str = ""


class Unavailable(RuntimeError):
    """This contender cannot run here; the message says exactly why."""


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None) -> Sample:
    """Run ``cmd`` once under /usr/bin/time: wall time, CPU (user+sys) and peak RSS.

    Not ``os.wait4`` on our own child: Linux counts a forked child's pre-exec RSS in its
    ru_maxrss, so a harness holding a blob in memory would inflate every figure. GNU time
    is small when it forks the tool.
    """
    if not os.access(TIME, os.X_OK):
        raise Unavailable(f"{TIME} is not installed (Debian package time)")
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as stats:
        start = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-q", "-o", stats.name, "-f", "%U %S %M", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - start
        err.seek(0)
        tail = err.read()[-600:].decode(errors="replace").strip()
        fields = stats.read().split()
    user, system, rss_kib = float(fields[-3]), float(fields[-2]), int(fields[-1])
    ok = proc.returncode == 0
    return Sample(
        wall=wall,
        cpu=user + system,
        rss_mib=rss_kib / 1024,
        ok=ok,
        note="" if ok else f"exit {proc.returncode}: {tail}",
    )


# ---------------------------------------------------------------------------------------
# pull-verify and skopeo


def pull_verify(reference: str, output: Path | None = None) -> Sample:
    cmd = [venv_bin("pull-verify"), "--quiet", reference]
    if output is None:
        return run_measured(cmd)
    try:
        return run_measured([*cmd, "--output", str(output)])
    finally:
        shutil.rmtree(output, ignore_errors=True)


def pull_verify_has_output() -> bool:
    proc = subprocess.run(
        [venv_bin("pull-verify"), "--help"], capture_output=True, text=True, check=False
    )
    return "--output" in proc.stdout


def skopeo_copy(reference: str, workdir: Path) -> Sample:
    if not os.access(SKOPEO, os.X_OK):
        raise Unavailable(f"{SKOPEO} is not installed (Debian package skopeo)")
    target = workdir / "skopeo-dir"
    shutil.rmtree(target, ignore_errors=True)
    try:
        return run_measured(
            [
                SKOPEO,
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{reference}",
                f"dir:{target}",
            ]
        )
    finally:
        shutil.rmtree(target, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The seed's manual pipeline: curl | tee >(sha256sum) | gzip -d | sha256sum, per layer


def manual_pipeline(registry_url: str, repo: str, image: BuiltImage, workdir: Path) -> Sample:
    if not os.access(CURL, os.X_OK):
        raise Unavailable(f"{CURL} is not installed (Debian package curl)")
    out = workdir / "manual"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    lines = ["set -o pipefail"]
    for i, layer in enumerate(image.layers):
        inflate = "gzip -dc" if layer.media_type.endswith("gzip") else "zstd -dcq"
        url = f"{registry_url}/v2/{repo}/blobs/{layer.digest}"
        # Layers run side by side, like a puller would: the fairest reading of the seed.
        lines.append(
            f"( curl -sSf '{url}' | tee >(sha256sum > {out}/c{i}) | {inflate} "
            f"| sha256sum > {out}/u{i} ) &"
        )
    lines.append("wait")
    script = out / "pipeline.sh"
    script.write_text("\n".join(lines) + "\n")
    sample = run_measured(["/bin/bash", str(script)])
    # The process substitutions may finish a moment after `wait`: give them that moment.
    deadline = time.monotonic() + 5
    ok = sample.ok
    for i, layer in enumerate(image.layers):
        while time.monotonic() < deadline and not _nonempty(out / f"c{i}"):
            time.sleep(0.01)
        got_c = (out / f"c{i}").read_text().split()[0] if _nonempty(out / f"c{i}") else ""
        got_u = (out / f"u{i}").read_text().split()[0] if _nonempty(out / f"u{i}") else ""
        ok = ok and f"sha256:{got_c}" == layer.digest and f"sha256:{got_u}" == layer.diff_id
    shutil.rmtree(out, ignore_errors=True)
    note = sample.note or ("" if ok else "digests printed did not match")
    return Sample(sample.wall, sample.cpu, sample.rss_mib, ok, note)


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


# ---------------------------------------------------------------------------------------
# containerd: a private daemon per repetition, its own root, state and socket

_CONTAINERD_CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
"""


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def _proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def private_containerd(workdir: Path) -> Iterator[tuple[int, Path]]:
    """A containerd daemon of our own; yields its pid and socket; stopped on exit."""
    if not (os.access(CONTAINERD, os.X_OK) and os.access(CTR, os.X_OK)):
        raise Unavailable(f"{CONTAINERD} / {CTR} not installed (Debian package containerd)")
    root = Path(tempfile.mkdtemp(prefix="ctrd-", dir=workdir))
    config = root / "config.toml"
    config.write_text(_CONTAINERD_CONFIG.format(root=root))
    sock = root / "containerd.sock"
    with (root / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(
            [CONTAINERD, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                tail = (root / "containerd.log").read_text(errors="replace")[-800:]
                raise Unavailable(f"containerd exited with {proc.returncode}: {tail}")
            ready = subprocess.run(
                [CTR, "--address", str(sock), "version"], capture_output=True, check=False
            )
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise Unavailable("containerd did not answer on its socket within 15 s")
            time.sleep(0.1)
        yield proc.pid, sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Snapshots may be mounts: unmount anything left below root before removing it.
        with contextlib.suppress(OSError):
            mounts = Path("/proc/self/mounts").read_text().splitlines()
            for line in reversed(mounts):
                point = line.split()[1]
                if point.startswith(str(root)):
                    subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def ctr_pull(reference: str, workdir: Path, snapshotter: str) -> Sample:
    """``ctr image pull`` (fetch, then unpack with diff_id checks) into a fresh daemon."""
    with private_containerd(workdir) as (pid, sock):
        cpu_before = _proc_cpu(pid)
        sample = run_measured(
            [
                CTR,
                "--address",
                str(sock),
                "--namespace",
                "bench",
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                snapshotter,
                reference,
            ]
        )
        daemon_cpu = _proc_cpu(pid) - cpu_before
        daemon_rss = _proc_hwm_mib(pid)
    return Sample(
        wall=sample.wall,
        cpu=sample.cpu + daemon_cpu,
        rss_mib=max(sample.rss_mib or 0.0, daemon_rss),
        ok=sample.ok,
        note=sample.note,
    )


def ctr_snapshotter(workdir: Path, reference: str) -> str:
    """overlayfs if this machine can mount it for containerd, else native; or Unavailable."""
    reasons = []
    for snapshotter in ("overlayfs", "native"):
        sample = ctr_pull(reference, workdir, snapshotter)
        if sample.ok:
            return snapshotter
        reasons.append(f"{snapshotter}: {sample.note}")
    raise Unavailable("ctr image pull failed with every snapshotter: " + "; ".join(reasons))


# ---------------------------------------------------------------------------------------
# The in-process limit: the bytes already in memory, the same libraries, every core


def _sha256(data: bytes) -> str:
    h = hashlib.sha256()
    view = memoryview(data)
    for pos in range(0, len(view), BLOCK):
        h.update(view[pos : pos + BLOCK])
    return "sha256:" + h.hexdigest()


def _inflate_into(data: bytes, gzip: bool, put: Callable[[bytes | None], None]) -> None:
    view = memoryview(data)
    if gzip:
        d = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        for pos in range(0, len(view), BLOCK):
            put(d.decompress(view[pos : pos + BLOCK]))
            while not d.needs_input and not d.eof:
                put(d.decompress(b""))
    else:
        z = zstd.ZstdDecompressor()  # the module pull-verify inflates with
        for pos in range(0, len(view), BLOCK):
            put(z.decompress(view[pos : pos + BLOCK]))
    put(None)


def _diff_hash(chunks: queue.Queue[bytes | None]) -> str:
    h = hashlib.sha256()
    while (chunk := chunks.get()) is not None:
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def in_process_limit(image: BuiltImage) -> Sample:
    """Hash and inflate every layer from memory: per layer, the blob hash, the inflate and
    the diff_id hash each get a thread (a bounded queue between the last two), so even a
    single-layer image keeps every core busy. Nothing is read from the network or disk
    while the clock runs."""
    blobs = [layer.path.read_bytes() for layer in image.layers]
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=3 * len(blobs)) as pool:
        jobs = []
        for blob, layer in zip(blobs, image.layers, strict=True):
            chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
            gzip = layer.media_type.endswith("gzip")
            jobs.append((layer.digest, pool.submit(_sha256, blob)))
            pool.submit(_inflate_into, blob, gzip, chunks.put)
            jobs.append((layer.diff_id, pool.submit(_diff_hash, chunks)))
        del blob
        ok = all(future.result() == expected for expected, future in jobs)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    del blobs
    return Sample(wall, cpu, None, ok, "" if ok else "digests differ")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"
