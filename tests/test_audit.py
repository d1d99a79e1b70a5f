"""``puller audit`` end to end against real registries: a real upstream, a real pull-through
cache and a plain copy as mirrors, damage made in their storage, the access log as witness."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import anyio
import pytest
from typer.testing import CliRunner

from puller.audit import (
    AuditSettings,
    BlobOutcome,
    BlobTask,
    HeadTask,
    LayerRef,
    ResolvedImage,
    distinct_blobs,
    judge_head,
    presence_checks,
    presence_findings,
    run_audit,
    targets_from_lines,
)
from puller.auditcache import AuditCache
from puller.cli import app
from puller.errors import BlobMissing, NetworkError, RegistryError
from puller.findings import Finding
from puller.registry import BlobHead
from tests.kit.client import KitHTTPError, request
from tests.kit.faultproxy import Fault, FaultProxy, Rule
from tests.kit.fixtures import RegistryFactory
from tests.kit.images import (
    Blob,
    BuiltImage,
    LayerSpec,
    build_image,
    build_index,
    make_tar,
    push_blob,
    push_image,
    push_index,
    push_manifest_bytes,
    random_bytes,
)
from tests.kit.registry import RunningRegistry, free_port

CHROMIUM = "/usr/bin/chromium"
_BLOB_GET = re.compile(r'"GET /v2/(\S+)/blobs/(sha256:[0-9a-f]{64}) HTTP')


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def findings(self) -> list[dict[str, Any]]:
        return [d for d in self.docs() if d["type"] == "finding"]

    def summary(self) -> dict[str, Any]:
        last = self.docs()[-1]
        assert last["type"] == "summary", self.stdout
        return last

    def kinds(self) -> set[tuple[str, str, str]]:
        """(repository:tag, kind, detail) of every finding."""
        return {(_short(f["reference"]), f["kind"], f["detail"]) for f in self.findings()}


def _short(reference: str) -> str:
    return reference.split("/", 1)[1]


def audit(*args: str, stdin: str | None = None) -> Run:
    result = CliRunner().invoke(app, ["audit", *args], input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def family(count: int, *, seed: int = 0, bases: int = 2) -> list[BuiltImage]:
    """Small images: one of ``bases`` shared base layers, then a layer of their own."""
    base_layers = [
        LayerSpec(make_tar({f"base/{b}.bin": random_bytes(4096, 1000 + b)})) for b in range(bases)
    ]
    return [
        build_image(
            [
                base_layers[i % bases],
                LayerSpec(make_tar({f"app/{seed}-{i}.txt": f"image {seed}-{i}\n".encode()})),
            ],
            fmt="docker",
        )
        for i in range(count)
    ]


def refs_file(tmp_path: Path, host: str, names: list[str]) -> Path:
    path = tmp_path / "refs.txt"
    path.write_text("# images to audit\n\n" + "".join(f"{host}/{n}  # keep\n" for n in names))
    return path


def blob_gets(registry: RunningRegistry, since: int = 0) -> list[tuple[str, str]]:
    """(repository, digest) of every blob GET in the registry's access log after ``since``."""
    found: list[tuple[str, str]] = []
    for line in registry.access_log()[since:]:
        match = _BLOB_GET.search(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def wait_stored(registry: RunningRegistry, digests: set[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while missing := [d for d in digests if not registry.blob_path(d).is_file()]:
        if time.monotonic() > deadline:
            raise AssertionError(f"{registry.url} never stored {missing}")
        time.sleep(0.02)


# -- a real pull-through cache as the mirror -----------------------------------------------


def test_pull_through_cache_reports_exactly_what_it_serves_wrong(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    upstream = registry_factory()
    mirror = registry_factory(proxy_remote_url=upstream.url)
    images = dict(zip(["team/a", "team/b", "team/c", "team/d"], family(4), strict=True))
    for repo, image in images.items():
        push_image(upstream.url, repo, "1", image)
    refs = refs_file(tmp_path, upstream.host, [f"{r}:1" for r in images])
    common = ["--mirror", mirror.host, "--upstream", upstream.host, "--json"]

    # Warm the cache by pulling everything through it: a clean audit does exactly that.
    warm = audit(str(refs), *common)
    assert warm.exit_code == 0, warm.stdout + warm.stderr
    assert warm.findings() == []
    assert warm.summary()["images"] == 4

    # The cache writes what it streamed to its storage in the background: wait for it.
    wait_stored(mirror, {b.digest for image in images.values() for b in image.blobs})
    a_own = images["team/a"].layers[1].digest
    b_own = images["team/b"].layers[1].digest
    d_own = images["team/d"].layers[1].digest
    mirror.flip_byte(a_own)  # corrupt in the cache's storage
    mirror.delete_blob_file(b_own)  # gone from the cache, still upstream
    mirror.delete_blob_file(d_own)  # gone from the cache AND upstream (collected there)
    upstream.delete_blob_file(d_own)
    retagged = family(1, seed=7)[0]
    push_image(upstream.url, "team/c", "1", retagged)  # c:1 moves upstream
    mirror.restart()
    upstream.restart()

    run = audit(str(refs), *common)
    assert run.exit_code == 1, run.stdout + run.stderr
    # The truth of a pull-through cache: it re-fetches what it lost while upstream still has
    # it (b), and re-checks tags upstream, so the moved tag is served fresh (c). What it
    # cannot repair is what it stores corrupt (a) and what upstream lost too (d).
    assert run.kinds() == {
        ("team/a:1", "blob-corrupt", "digest"),
        ("team/d:1", "blob-missing", ""),
    }
    by_kind = {f["kind"]: f for f in run.findings()}
    corrupt = by_kind["blob-corrupt"]
    assert corrupt["subject"] == f"layer {a_own}"
    assert corrupt["expected"] == a_own
    assert corrupt["actual"].startswith("sha256:")
    assert corrupt["actual"] != a_own
    assert corrupt["host"] == mirror.host
    assert by_kind["blob-missing"]["subject"] == f"layer {d_own}"
    wait_stored(mirror, {b_own})  # re-fetched from upstream, stored again in the background
    assert mirror.blob_path(b_own).read_bytes() == images["team/b"].layers[1].blob.data
    summary = run.summary()
    assert summary["findings_by_kind"] == {"blob-missing": 1, "blob-corrupt": 1}
    assert summary["exit_code"] == 1
    # c was audited at the new digest: its new layer came through the mirror.
    mirror_gets = {digest for _, digest in blob_gets(mirror)}
    assert retagged.layers[1].digest in mirror_gets


# -- a plain copy as the mirror: stale tags, missing tags, missing and corrupt blobs ------


def test_copied_mirror_stale_missing_corrupt_and_html_report(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    upstream = registry_factory()
    mirror = registry_factory()
    images = dict(zip(["app/a", "app/b", "app/c", "app/e"], family(4, seed=3), strict=True))
    for repo, image in images.items():
        push_image(upstream.url, repo, "v1", image)
        if repo != "app/e":  # e was never copied
            push_image(mirror.url, repo, "v1", image)
    moved = family(1, seed=9)[0]
    push_image(upstream.url, "app/c", "v1", moved)  # the mirror's c is now stale
    a_own = images["app/a"].layers[1]
    b_own = images["app/b"].layers[1].digest
    mirror.truncate_blob(a_own.digest, a_own.blob.size - 10)
    mirror.delete_blob_file(b_own)
    mirror.restart()  # drop the descriptor cache: sizes and presence as on disk
    refs = refs_file(tmp_path, upstream.host, [f"{r}:v1" for r in images])
    html = tmp_path / "report.html"
    since = len(mirror.access_log())

    run = audit(
        str(refs), "--mirror", mirror.host, "--upstream", upstream.host, "--json",
        "--html", str(html),
    )  # fmt: skip
    assert run.exit_code == 1, run.stdout + run.stderr
    assert run.kinds() == {
        ("app/a:v1", "blob-corrupt", "size"),
        ("app/b:v1", "blob-missing", ""),
        ("app/c:v1", "stale-digest", ""),
        ("app/e:v1", "tag-missing", ""),
    }
    stale = next(f for f in run.findings() if f["kind"] == "stale-digest")
    assert stale["expected"] == moved.manifest_digest
    assert stale["actual"] == images["app/c"].manifest_digest
    assert stale["host"] == mirror.host
    assert stale["reference"] == f"{mirror.host}/app/c:v1"
    size = next(f for f in run.findings() if f["kind"] == "blob-corrupt")
    assert (size["expected"], size["actual"]) == (str(a_own.blob.size), str(a_own.blob.size - 10))
    # Upstream is asked with HEAD only: a HEAD does not count against pull quotas.
    assert not [line for line in upstream.access_log()[-8:] if '"GET /v2/app' in line]
    # Each distinct blob once, although the base layers are shared: 3 configs, 2 bases,
    # 3 own layers (the stale c is audited as the mirror serves it).
    gets = blob_gets(mirror, since)
    assert len(gets) == len({d for _, d in gets}) == 8

    # The HTML report, as a person sees it: rendered by a real browser.
    dom = chromium_dom(html, tmp_path)
    assert 'id="verdict" class="bad">4 findings.' in dom
    assert dom.count('<tr class="integrity"') == 4
    for kind in ("stale-digest", "tag-missing", "blob-missing", "blob-corrupt (size)"):
        assert kind in dom
    assert f"{mirror.host}/app/e:v1" in dom
    assert '<td class="bad">1 finding</td>' in dom
    assert not list(tmp_path.glob(".report.html.*"))  # no temporary left behind


def chromium_dom(html: Path, tmp_path: Path) -> str:
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"{CHROMIUM} is not installed; run `make deps` (Debian: chromium)")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# -- scale: hundreds of images sharing base layers ------------------------------------------


def upload_blob(registry: RunningRegistry, repo: str, blob: Blob) -> None:
    """POST then PUT ?digest=, without the existence check: fast pushes of fresh blobs.

    (distribution 2.8 answers a single-request POST ?digest= with 202 and ignores the body.)
    """
    start = request("POST", f"{registry.url}/v2/{repo}/blobs/uploads/", body=b"")
    location = start.header("Location")
    if start.status != 202 or not location:
        raise KitHTTPError(f"POST upload {repo}", start.status, start.body)
    url = urljoin(registry.url + "/", location)
    url += ("&" if "?" in url else "?") + f"digest={blob.digest}"
    done = request("PUT", url, body=blob.data, headers={"Content-Type": "application/octet-stream"})
    if done.status != 201:
        raise KitHTTPError(f"PUT blob {repo}@{blob.digest}", done.status, done.body)


def push_many(registry: RunningRegistry, images: dict[str, BuiltImage]) -> None:
    """Shared base layers once per repository, then each image's own blobs and manifest."""
    bases = {layer.digest: layer.blob for i in images.values() for layer in i.layers[:1]}
    repos = sorted({name.split(":")[0] for name in images})

    def push_bases(repo: str) -> None:
        for blob in bases.values():
            push_blob(registry.url, repo, blob)

    def push(item: tuple[str, BuiltImage]) -> None:
        (repo, tag), image = item[0].split(":"), item[1]
        for blob in (image.config, *(layer.blob for layer in image.layers[1:])):
            upload_blob(registry, repo, blob)
        push_manifest_bytes(registry.url, repo, tag, image.manifest, image.manifest_media_type)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(push_bases, repos))
        list(pool.map(push, images.items()))


def test_scale_each_distinct_blob_fetched_once_and_cache_makes_it_incremental(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    built = family(300, seed=11, bases=3)
    images = {f"fleet/svc{i % 30:02d}:t{i // 30}": image for i, image in enumerate(built)}
    push_many(registry, images)
    distinct = {b.digest for image in built for b in image.blobs}
    assert len(distinct) == 603  # 300 configs, 300 own layers, 3 bases
    cache = tmp_path / "audit.db"
    since = len(registry.access_log())

    # Walk the catalog (7 repositories per page: Link pagination), then every tag.
    run = audit(
        "--catalog", registry.host, "--repo", "fleet/*", "--catalog-page-size", "7",
        "--json", "--cache", str(cache), "--jobs", "16",
    )  # fmt: skip
    assert run.exit_code == 0, run.stdout[-2000:] + run.stderr
    summary = run.summary()
    assert summary["references"] == summary["images"] == 300
    assert summary["blobs"] == summary["blobs_fetched"] == len(distinct)
    gets = blob_gets(registry, since)
    per_digest = Counter(d for _, d in gets)
    assert set(per_digest) == distinct
    assert max(per_digest.values()) == 1
    catalog_pages = [line for line in registry.access_log()[since:] if "/v2/_catalog" in line]
    assert len(catalog_pages) == 5  # 30 repositories, 7 a page

    # Again with the cache, for one repository: its layers verified a moment ago are not
    # fetched; its configs are (their diff_ids say what the layers must be).
    since = len(registry.access_log())
    again = audit(
        "--catalog", registry.host, "--repo", "fleet/svc00", "--json", "--cache", str(cache),
        "--max-age", "1h",
    )  # fmt: skip
    assert again.exit_code == 0, again.stdout[-2000:] + again.stderr
    mine = [image for name, image in images.items() if name.startswith("fleet/svc00:")]
    assert len(mine) == 10
    own_layers = {layer.digest for image in mine for layer in image.layers}
    assert again.summary()["blobs_cached"] == len(own_layers)
    fetched = {d for _, d in blob_gets(registry, since)}
    assert fetched == {image.config.digest for image in mine}


# -- an interrupted audit resumes ------------------------------------------------------------


class _StopAfter:
    def __init__(self, blobs: int) -> None:
        self.left = blobs
        self.phase_name = ""

    def phase(self, name: str, total: int) -> None:
        self.phase_name = name

    def advance(self, n: int = 1) -> None:
        if self.phase_name == "verifying blobs":
            self.left -= n
            if self.left <= 0:
                raise KeyboardInterrupt

    def finding(self, finding: Finding) -> None:
        return None


def test_interrupted_audit_resumes_where_it_stopped(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    built = family(12, seed=21, bases=2)
    for i, image in enumerate(built):
        push_image(registry.url, "resume/app", f"t{i}", image)
    settings = AuditSettings(jobs=1, per_registry=1)
    targets = targets_from_lines(
        [f"{registry.host}/resume/app:t{i}" for i in range(12)], settings, "test"
    )
    db = tmp_path / "audit.db"
    with AuditCache(db) as cache, pytest.raises(KeyboardInterrupt):
        anyio.run(lambda: run_audit(targets, settings, cache=cache, observer=_StopAfter(5)))
    with AuditCache(db) as cache:
        assert cache.count() >= 5
        recorded = cache.count()
        since = len(registry.access_log())
        report = anyio.run(lambda: run_audit(targets, settings, cache=cache))
    layers = {layer.digest for image in built for layer in image.layers}
    assert report.summary.findings == 0
    assert report.summary.blobs_cached == recorded
    fetched_layers = {d for _, d in blob_gets(registry, since)} & layers
    assert len(fetched_layers) == len(layers) - recorded


# -- every platform of an index -------------------------------------------------------------


def test_every_platform_of_an_index_is_audited(registry: RunningRegistry) -> None:
    amd, arm = (
        build_image(
            [LayerSpec(make_tar({f"{arch}.bin": random_bytes(8192, n)}))], fmt="oci", arch=arch
        )
        for n, arch in enumerate(("amd64", "arm64"))
    )
    push_index(registry.url, "multi/app", "1", build_index([amd, arm], "oci"))
    registry.flip_byte(arm.layers[0].digest)
    run = audit("-", "--json", stdin=f"{registry.host}/multi/app:1\n")
    assert run.exit_code == 1, run.stdout + run.stderr
    assert [(f["reference"], f["kind"], f["detail"]) for f in run.findings()] == [
        (f"{registry.host}/multi/app:1 [linux/arm64]", "blob-corrupt", "digest")
    ]
    assert run.summary()["images"] == 2


# -- 429: slow down, do not fail ------------------------------------------------------------


def test_rate_limited_registry_is_waited_for_not_failed(registry: RunningRegistry) -> None:
    images = family(3, seed=31)
    for i, image in enumerate(images):
        push_image(registry.url, "limited/app", f"t{i}", image)
    with FaultProxy(registry.url) as proxy:
        # More 429s in a row than the request's own retries allow (none): only the
        # per-registry slow-down, honouring Retry-After, gets the audit through.
        proxy.add(Rule(Fault.RATE_LIMIT, path_contains="/blobs/", times=4, retry_after="0.2"))
        refs = "".join(f"{proxy.host}/limited/app:t{i}\n" for i in range(3))
        run = audit("-", "--json", "--retries", "0", stdin=refs)
        limited = [r for r in proxy.log if r.fault is Fault.RATE_LIMIT]
    assert run.exit_code == 0, run.stdout + run.stderr
    assert run.findings() == []
    assert len(limited) == 4
    assert run.summary()["blobs_fetched"] == 3 + 2 + 3  # configs, bases, own layers


# -- manifests whose bytes are not what they claim -------------------------------------------


def test_manifest_bytes_not_matching_their_digest_or_header(registry: RunningRegistry) -> None:
    images = family(3, seed=61)
    for i, image in enumerate(images):
        push_image(registry.url, "claims/app", f"t{i}", image)
    pinned = images[2].manifest_digest
    with FaultProxy(registry.url) as proxy:
        # t0: a lying Docker-Content-Digest; t1: damaged bytes under the true header;
        # @digest: damaged bytes asked for by digest.
        proxy.add(
            Rule(Fault.WRONG_DIGEST_HEADER, path_contains="/manifests/t0", times=None),
            Rule(Fault.FLIP_BYTE, path_contains="/manifests/t1", after_bytes=40, times=None),
            Rule(Fault.FLIP_BYTE, path_contains=f"/manifests/{pinned}", after_bytes=40, times=None),
        )
        refs = (
            f"{proxy.host}/claims/app:t0\n{proxy.host}/claims/app:t1\n"
            f"{proxy.host}/claims/app@{pinned}\n"
        )
        run = audit("-", "--json", stdin=refs)
    assert run.exit_code == 1, run.stdout + run.stderr
    found = {(_short(f["reference"]), f["detail"], f["expected"]) for f in run.findings()}
    assert found == {
        ("claims/app:t0", "docker-content-digest", "sha256:" + "0" * 64),
        ("claims/app:t1", "docker-content-digest", images[1].manifest_digest),
        (f"claims/app@{pinned}", "digest", pinned),
        (f"claims/app@{pinned}", "docker-content-digest", pinned),
    }
    assert {f["kind"] for f in run.findings()} == {"manifest-mismatch"}
    assert run.summary()["images"] == 0  # nothing a lying manifest names is trusted


# -- the command line: inputs, usage errors, unreachable and unknown ----------------------------


def test_usage_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "refs.txt"
    bad.write_text("# fine\n127.0.0.1:5000/ok:1\nNot A Reference!\n")
    cases = [
        (["--json"], "give either a file of references or --catalog"),
        ([str(bad)], f"{bad}:3: invalid reference"),
        ([str(tmp_path / "absent.txt")], "cannot read references from"),
        (["-", "--upstream", "127.0.0.1:1"], "--upstream needs --mirror"),
        (["-", "--max-age", "soon", "--cache", str(tmp_path / "c.db")], "invalid duration"),
    ]
    for args, message in cases:
        run = audit(*args, stdin="127.0.0.1:5000/x:1\n")
        assert run.exit_code == 2, (args, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, run.stderr
        assert lines[0].startswith("puller audit: ")
        assert message in lines[0]
        assert "Traceback" not in run.stderr


def test_unchecked_images_exit_3_or_4_and_do_not_stop_the_audit(
    registry: RunningRegistry,
) -> None:
    image = family(1, seed=41)[0]
    push_image(registry.url, "ok/app", "1", image)
    unknown = audit("-", "--json", stdin=f"{registry.host}/ok/app:1\n{registry.host}/ok/app:nope\n")
    assert unknown.exit_code == 3, unknown.stdout + unknown.stderr
    assert unknown.kinds() == {("ok/app:nope", "registry-error", "")}
    assert unknown.summary()["images"] == 1  # the good one was audited in full
    assert unknown.summary()["unchecked"] == 1

    dead = f"127.0.0.1:{free_port()}"
    unreachable = audit("-", "--json", "--retries", "0", stdin=f"{dead}/x/y:1\n")
    assert unreachable.exit_code == 4, unreachable.stdout + unreachable.stderr
    [finding] = unreachable.findings()
    assert (finding["kind"], finding["host"]) == ("network-error", dead)


def test_terminal_lines_name_reference_kind_expected_and_actual(
    registry: RunningRegistry,
) -> None:
    image = family(1, seed=51)[0]
    push_image(registry.url, "text/app", "1", image)
    own = image.layers[1].digest
    registry.flip_byte(own)
    run = audit("-", stdin=f"{registry.host}/text/app:1\n")
    assert run.exit_code == 1
    lines = run.stdout.splitlines()
    finding = next(line for line in lines if line.startswith("FINDING"))
    assert finding.startswith(f"FINDING blob-corrupt (digest) {registry.host}/text/app:1: layer")
    assert f"expected {own}, got sha256:" in finding
    assert lines[-1].startswith("Status: 1 finding (blob-corrupt 1)")
    assert "Blobs: 3 distinct, 3 fetched" in run.stdout


def test_a_pinned_tag_that_moved_is_stale_on_a_single_registry(
    registry: RunningRegistry,
) -> None:
    old, new = family(2, seed=71)
    push_image(registry.url, "pin/app", "1", old)
    push_image(registry.url, "pin/app", "1", new)
    run = audit("-", "--json", stdin=f"{registry.host}/pin/app:1@{old.manifest_digest}\n")
    assert run.exit_code == 1, run.stdout + run.stderr
    [stale] = run.findings()
    assert (stale["kind"], stale["expected"], stale["actual"]) == (
        "stale-digest",
        old.manifest_digest,
        new.manifest_digest,
    )
    assert run.summary()["images"] == 1  # what the tag names now is still audited in full


def test_a_blob_named_under_two_layer_types_is_checked_as_each(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    tar = make_tar({"same.bin": random_bytes(20_000, 81)})
    honest = build_image([LayerSpec(tar)], fmt="oci")
    mislabelled = build_image(
        [LayerSpec(tar, media_type="application/vnd.oci.image.layer.v1.tar+zstd")], fmt="oci"
    )
    assert honest.layers[0].digest == mislabelled.layers[0].digest  # one blob, two claims
    push_image(registry.url, "types/honest", "v1", honest)
    push_image(registry.url, "types/zstd", "v1", mislabelled)
    refs = f"{registry.host}/types/honest:v1\n{registry.host}/types/zstd:v1\n"
    cache = tmp_path / "audit.db"
    for _ in range(2):  # the second run reads the cache: it must keep the claims apart too
        run = audit("-", "--json", "--cache", str(cache), stdin=refs)
        assert run.exit_code == 1, run.stdout + run.stderr
        [finding] = run.findings()
        assert finding["reference"].endswith("types/zstd:v1")
        assert (finding["kind"], finding["detail"]) == ("blob-corrupt", "decompression")


# -- each repository must serve the blobs its manifests name ----------------------------------


def delete_layer_link(registry: RunningRegistry, repository: str, digest: str) -> None:
    """Unlink a layer from one repository: the blob stays stored, and served by the others.

    Restart afterwards: the registry keeps the repository's descriptors in memory too.
    """
    hexpart = digest.removeprefix("sha256:")
    links = registry.storage_root / "docker/registry/v2/repositories" / repository / "_layers"
    (links / "sha256" / hexpart / "link").unlink()


def blob_heads(registry: RunningRegistry, since: int = 0) -> list[tuple[str, str, int]]:
    """(repository, digest, status) of every blob HEAD in the access log after ``since``."""
    pattern = re.compile(r'"HEAD /v2/(\S+)/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d{3})')
    found: list[tuple[str, str, int]] = []
    for line in registry.access_log()[since:]:
        match = pattern.search(line)
        if match:
            found.append((match.group(1), match.group(2), int(match.group(3))))
    return found


def audit_with_a_link_deleted(
    registry: RunningRegistry, image: BuiltImage, repos: Sequence[str], repo: str, digest: str
) -> tuple[Run, int]:
    """Push ``image`` as tag 1 of each of ``repos``, delete ``repo``'s link to ``digest``,
    restart (the registry caches descriptors), and audit every tag 1; with the access log's
    length before the audit."""
    for name in repos:
        push_image(registry.url, name, "1", image)
    delete_layer_link(registry, repo, digest)
    registry.restart()
    since = len(registry.access_log())
    refs = "".join(f"{registry.host}/{name}:1\n" for name in repos)
    return audit("-", "--json", stdin=refs), since


def test_a_layer_one_repository_does_not_link_is_missing_there(
    registry: RunningRegistry,
) -> None:
    # The same image in two repositories; b loses its link to one layer. `docker pull` of
    # b fails (BLOB_UNKNOWN) although the blob is stored and served through a.
    image = family(1, seed=91)[0]
    own = image.layers[1].digest
    run, since = audit_with_a_link_deleted(registry, image, ["links/a", "links/b"], "links/b", own)
    assert run.exit_code == 1, run.stdout + run.stderr
    [missing] = run.findings()
    assert (missing["reference"], missing["kind"], missing["subject"], missing["host"]) == (
        f"{registry.host}/links/b:1",
        "blob-missing",
        f"layer {own}",
        registry.host,
    )
    assert (missing["expected"], missing["actual"]) == ("blob present", "HTTP 404")
    assert f"{registry.host}/links/b" in missing["message"]
    # Each blob is still fetched once; b's layers are asked for with a HEAD, not fetched.
    gets = blob_gets(registry, since)
    layers = {layer.digest for layer in image.layers}
    assert sorted((r, d) for r, d in gets if d in layers) == sorted(("links/a", d) for d in layers)
    # The config is small and is what the layers are judged by: fetched in each repository.
    assert sorted(r for r, d in gets if d == image.config.digest) == ["links/a", "links/b"]
    assert {(r, d, s) for r, d, s in blob_heads(registry, since)} == {
        ("links/b", image.layers[0].digest, 200),
        ("links/b", own, 404),
    }
    assert run.summary()["blobs_headed"] == 2


def test_the_first_repository_missing_a_link_is_not_blamed_on_the_others(
    registry: RunningRegistry,
) -> None:
    # a comes first, so its 404 is what the one GET meets: b must not inherit it, and the
    # layer's bytes must still be verified, through b.
    image = family(1, seed=94)[0]
    own = image.layers[1].digest
    run, since = audit_with_a_link_deleted(registry, image, ["first/a", "first/b"], "first/a", own)
    assert run.exit_code == 1, run.stdout + run.stderr
    [missing] = run.findings()
    assert (_short(missing["reference"]), missing["kind"], missing["subject"]) == (
        "first/a:1",
        "blob-missing",
        f"layer {own}",
    )
    assert [r for r, d in blob_gets(registry, since) if d == own] == ["first/a", "first/b"]
    summary = run.summary()
    assert summary["blobs_headed"] == 1  # b's base layer: the GETs proved the rest
    assert summary["findings_by_kind"] == {"blob-missing": 1}


def test_a_layer_named_twice_in_a_manifest_is_one_finding(registry: RunningRegistry) -> None:
    twice = LayerSpec(make_tar({"same.bin": random_bytes(2048, 96)}))
    image = build_image([twice, twice], fmt="oci")
    repos = ["twice/a", "twice/b"]
    run, _ = audit_with_a_link_deleted(registry, image, repos, "twice/b", image.layers[0].digest)
    assert run.exit_code == 1, run.stdout + run.stderr
    assert [(_short(f["reference"]), f["kind"]) for f in run.findings()] == [
        ("twice/b:1", "blob-missing")
    ]


def test_a_config_one_repository_does_not_link_is_missing_there_only(
    registry: RunningRegistry,
) -> None:
    image = family(1, seed=92)[0]
    repos = ["cfg/a", "cfg/b", "cfg/c"]
    # Configs are linked in a repository like layers.
    run, _ = audit_with_a_link_deleted(registry, image, repos, "cfg/b", image.config.digest)
    assert run.exit_code == 1, run.stdout + run.stderr
    [missing] = run.findings()
    assert (_short(missing["reference"]), missing["kind"], missing["subject"]) == (
        "cfg/b:1",
        "blob-missing",
        f"config {image.config.digest}",
    )


def test_a_cached_layer_the_mirror_lost_is_found_missing_without_fetching_it(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    image = family(1, seed=93)[0]
    push_image(registry.url, "kept/app", "1", image)
    refs = f"{registry.host}/kept/app:1\n"
    cache = tmp_path / "audit.db"
    first = audit("-", "--json", "--cache", str(cache), stdin=refs)
    assert first.exit_code == 0, first.stdout + first.stderr
    assert first.findings() == []
    own = image.layers[1].digest
    registry.delete_blob_file(own)
    registry.restart()  # drop the descriptor cache: presence as on disk
    since = len(registry.access_log())

    again = audit("-", "--json", "--cache", str(cache), stdin=refs)
    assert again.exit_code == 1, again.stdout + again.stderr
    [missing] = again.findings()
    assert (missing["kind"], missing["subject"]) == ("blob-missing", f"layer {own}")
    summary = again.summary()
    assert summary["blobs_cached"] == 2  # both layers trusted: neither is fetched
    assert summary["blobs_headed"] == 2  # ... yet each is asked for in its repository
    assert own not in {d for _, d in blob_gets(registry, since)}
    assert ("kept/app", own, 404) in blob_heads(registry, since)


def test_a_layer_lost_by_every_repository_is_one_finding_per_image(
    registry: RunningRegistry,
) -> None:
    # The GET through a already finds the blob gone, for a's image and b's: b's HEAD must
    # not tell b's image a second time.
    image = family(1, seed=95)[0]
    push_image(registry.url, "gone/a", "1", image)
    push_image(registry.url, "gone/b", "1", image)
    own = image.layers[1].digest
    registry.delete_blob_file(own)
    registry.restart()
    run = audit("-", "--json", stdin=f"{registry.host}/gone/a:1\n{registry.host}/gone/b:1\n")
    assert run.exit_code == 1, run.stdout + run.stderr
    assert sorted((_short(f["reference"]), f["kind"], f["subject"]) for f in run.findings()) == [
        ("gone/a:1", "blob-missing", f"layer {own}"),
        ("gone/b:1", "blob-missing", f"layer {own}"),
    ]


def test_head_answers_redirect_lying_header_and_server_error(registry: RunningRegistry) -> None:
    image = family(1, seed=97)[0]
    for repo in ("heads/a", "heads/b", "heads/c"):
        push_image(registry.url, repo, "1", image)
    base, own = (layer.digest for layer in image.layers)
    storage = f"http://127.0.0.1:{free_port()}/signed-for-get"  # nothing listens: not followed
    with FaultProxy(registry.url) as proxy:
        proxy.add(
            Rule(Fault.REDIRECT, method="HEAD", path_contains=f"heads/b/blobs/{base}",
                 location=storage),
            Rule(Fault.WRONG_DIGEST_HEADER, method="HEAD", path_contains=f"heads/b/blobs/{own}"),
            Rule(Fault.STATUS, method="HEAD", path_contains=f"heads/c/blobs/{own}", status=500),
        )  # fmt: skip
        refs = "".join(f"{proxy.host}/heads/{r}:1\n" for r in "abc")
        run = audit("-", "--json", "--retries", "0", stdin=refs)
        heads = [(r.path, r.status) for r in proxy.log if r.method == "HEAD"]
    assert run.exit_code == 1, run.stdout + run.stderr
    assert run.kinds() == {
        ("heads/b:1", "blob-corrupt", "digest"),
        ("heads/c:1", "registry-error", ""),
    }
    lying = next(f for f in run.findings() if f["kind"] == "blob-corrupt")
    assert (lying["subject"], lying["expected"]) == (f"layer {own}", own)
    assert lying["actual"] == "sha256:" + "0" * 64
    assert "HTTP 500" in next(f for f in run.findings() if f["kind"] == "registry-error")["message"]
    assert (f"/v2/heads/b/blobs/{base}", 307) in heads  # a redirect says "served": fine
    assert len(heads) == 4  # b and c, each layer once: a's were fetched


def test_a_head_that_finds_a_cached_layer_wrong_makes_the_next_run_fetch_it(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    image = family(1, seed=98)[0]
    push_image(registry.url, "lied/app", "1", image)
    own = image.layers[1].digest
    cache = tmp_path / "audit.db"
    with FaultProxy(registry.url) as proxy:
        refs = f"{proxy.host}/lied/app:1\n"
        first = audit("-", "--json", "--cache", str(cache), stdin=refs)
        assert first.exit_code == 0, first.stdout + first.stderr
        # Cached now: the next run only HEADs it, and the HEAD lies about its digest.
        proxy.add(Rule(Fault.WRONG_DIGEST_HEADER, method="HEAD", path_contains=own))
        lied = audit("-", "--json", "--cache", str(cache), stdin=refs)
        assert lied.kinds() == {("lied/app:1", "blob-corrupt", "digest")}
        third = audit("-", "--json", "--cache", str(cache), stdin=refs)
        gets = [r.path for r in proxy.log if r.method == "GET" and own in r.path]
    # The record was dropped, so the third run fetched the bytes again (and found them fine).
    assert third.exit_code == 0, third.stdout + third.stderr
    assert len(gets) == 2
    assert third.summary()["blobs_cached"] == 1


# -- the presence phase's pure parts ------------------------------------------------------

_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
_H = "127.0.0.1:5000"
_D1, _D2, _D3 = (f"sha256:{c * 64}" for c in "123")


def _resolved(repository: str, tag: str, *digests: str, host: str = _H) -> ResolvedImage:
    layers = tuple(LayerRef(d, 10, _GZ, "") for d in digests)
    return ResolvedImage(f"{host}/{repository}:{tag}", host, repository, "sha256:m", "",
                         "sha256:c", layers)  # fmt: skip


def test_presence_checks_skip_only_what_a_get_proved_in_that_repository() -> None:
    images = [
        _resolved("a", "1", _D1, _D2),
        _resolved("b", "1", _D1, _D3),
        _resolved("b", "2", _D1, _D3),  # the same pairs again: asked once
        _resolved("a", "1", _D1, host="127.0.0.1:5001"),  # another host is another mirror
    ]
    fetched = [BlobOutcome(_H, _D1, 10, tried=("a",)), BlobOutcome(_H, _D2, 10, tried=("a",))]
    assert presence_checks(images, fetched) == [  # _D3 was cached: no GET went anywhere
        HeadTask(_H, "b", _D1, 10, _GZ),
        HeadTask(_H, "b", _D3, 10, _GZ),
        HeadTask("127.0.0.1:5001", "a", _D1, 10, _GZ),
    ]
    # Nothing fetched (every layer cached): every pair is asked for.
    assert len(presence_checks(images, [])) == 5
    # A GET that met a 404 in b and then served _D1 through a proved both pairs.
    both = [BlobOutcome(_H, _D1, 10, tried=("b", "a"), missing_in=("b",))]
    assert HeadTask(_H, "b", _D1, 10, _GZ) not in presence_checks(images, both)


def test_distinct_blobs_name_every_repository_to_fall_back_on() -> None:
    images = [
        _resolved("a", "1", _D1, _D2),
        _resolved("b", "1", _D1),
        _resolved("b", "2", _D1),
        _resolved("c", "1", _D1, host="127.0.0.1:5001"),
    ]
    assert distinct_blobs(images) == [
        BlobTask(_H, "a", _D1, 10, _GZ, others=("b",)),
        BlobTask(_H, "a", _D2, 10, _GZ),
        BlobTask("127.0.0.1:5001", "c", _D1, 10, _GZ),
    ]


def test_judging_a_head_answer() -> None:
    task = HeadTask(_H, "b", _D1, 10, _GZ)

    def judged(answer: BlobHead | Exception) -> tuple[str, str, str, str]:
        assert isinstance(answer, BlobHead | BlobMissing | NetworkError | RegistryError)
        outcome = judge_head(task, answer)
        return outcome.kind, outcome.detail, outcome.expected, outcome.actual

    fine = ("", "", "", "")
    assert judged(BlobHead(10, _D1, redirected=False)) == fine
    assert judged(BlobHead(10, None, redirected=False)) == fine
    assert judged(BlobHead(None, None, redirected=True)) == fine  # served, from elsewhere
    assert judged(BlobHead(None, None, redirected=False)) == fine  # no length: presence only
    assert judged(BlobHead(10, "sha512:" + "0" * 128, redirected=False)) == fine
    assert judged(BlobHead(9, _D1, redirected=False)) == ("blob-corrupt", "size", "10", "9")
    assert judged(BlobHead(10, _D2, redirected=True)) == ("blob-corrupt", "digest", _D1, _D2)
    assert judged(BlobHead(10, "md5:x", redirected=False)) == (
        "blob-corrupt", "digest", _D1, "md5:x",
    )  # fmt: skip
    missing = judge_head(task, BlobMissing("blob gone"))
    assert (missing.kind, missing.expected, missing.actual) == (
        "blob-missing", "blob present", "HTTP 404",
    )  # fmt: skip
    assert missing.message == (
        f"layer {_D1} is not served by {_H}/b (HTTP 404), though its manifest names it"
    )
    assert judged(NetworkError("reset"))[0] == "network-error"
    assert judged(RegistryError("boom", status=500))[0] == "registry-error"


def test_presence_findings_name_each_image_of_the_repository() -> None:
    task = HeadTask(_H, "b", _D1, 10, _GZ)
    uses = [
        (image, image.layers[0]) for image in (_resolved("b", "1", _D1), _resolved("b", "2", _D1))
    ]
    assert presence_findings(judge_head(task, BlobHead(10, _D1, redirected=False)), uses) == []
    found = presence_findings(judge_head(task, BlobMissing("gone")), uses)
    assert [(f.reference, f.kind, f.subject, f.host) for f in found] == [
        (f"{_H}/b:1", "blob-missing", f"layer {_D1}", _H),
        (f"{_H}/b:2", "blob-missing", f"layer {_D1}", _H),
    ]
