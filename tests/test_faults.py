"""Network faults and lying servers, through a real fault proxy in front of a real registry.

Every case asserts the exact outcome: verified after retry (with the attempts and resume
offsets the JSON report gives, and the Range headers the proxy saw), or the classified
failure, its exit code, and that integrity failures were never retried.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from typer.testing import CliRunner

from puller.cli import verify_app
from puller.pull import iter_chunks
from tests.kit.cli import one_line_error, verify
from tests.kit.faultproxy import Fault, FaultProxy, Rule, html_error_page
from tests.kit.images import (
    BuiltImage,
    LayerSpec,
    build_image,
    make_tar,
    push_image,
    random_bytes,
    text_like_bytes,
)
from tests.kit.registry import BasicAuthRegistry, RunningRegistry

REPO = "faults/img"
CUT = 100_000  # where a layer body is broken off: past several socket reads, before the end
# Quick to give up if something hangs; the stall tests shorten the read timeout themselves.
FAST = ("--read-timeout", "10", "--retries", "3", "--retry-max-time", "20")
STALLED = ("--read-timeout", "1")


@pytest.fixture(scope="module")
def image(shared_registry: RunningRegistry) -> BuiltImage:
    """Two gzip layers, the first ~300 kB compressed (so CUT falls midway), pushed once."""
    built = build_image(
        [
            LayerSpec(make_tar({"random.bin": random_bytes(300_000, 41)})),
            LayerSpec(make_tar({"text.txt": text_like_bytes(200_000, 42)})),
        ],
        fmt="oci",
    )
    assert built.layers[0].blob.size > 2 * CUT
    push_image(shared_registry.url, REPO, "t", built)
    return built


def ref(proxy: FaultProxy) -> str:
    return f"{proxy.host}/{REPO}:t"


def blob_gets(proxy: FaultProxy, digest: str) -> list[str | None]:
    """The Range header of every GET of ``digest`` the proxy saw, in order."""
    return [r.range for r in proxy.requests_for(f"/blobs/{digest}")]


# -- transient faults: retried, resumed, verified ------------------------------------------


@pytest.mark.parametrize("fault", [Fault.SHORT_BODY, Fault.STALL])
def test_cut_off_body_resumes_from_the_offset_reached(
    proxy: FaultProxy, image: BuiltImage, fault: Fault
) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(fault, victim, after_bytes=CUT, stall=10.0))
    run = verify("--json", *FAST, *STALLED, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    layer = run.layer(0)
    assert layer["verified"] is True
    assert layer["attempts"] == 2
    assert layer["resumed_at"] == [CUT]
    assert layer["diff_id"] == image.layers[0].diff_id
    assert blob_gets(proxy, victim) == [None, f"bytes={CUT}-"]


def test_reset_midway_resumes_with_range(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.RESET, victim, after_bytes=CUT))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    layer = run.layer(0)
    assert layer["attempts"] == 2
    # A reset may discard what was still in flight; whatever arrived is kept.
    [resumed] = layer["resumed_at"]
    assert 0 < resumed <= CUT
    assert blob_gets(proxy, victim) == [None, f"bytes={resumed}-"]


def test_a_blob_sent_in_odd_http_chunks_verifies(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.CHUNKED, victim))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    assert run.layer(0)["attempts"] == 1
    assert [r.fault for r in proxy.requests_for(f"/blobs/{victim}")] == [Fault.CHUNKED]


def test_a_chunked_body_cut_off_resumes_with_range(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.CHUNKED, victim, after_bytes=CUT))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    [resumed] = run.layer(0)["resumed_at"]
    assert 0 < resumed <= CUT
    assert blob_gets(proxy, victim) == [None, f"bytes={resumed}-"]


def test_two_cuts_resume_twice(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(
        Rule(Fault.SHORT_BODY, victim, after_bytes=CUT),
        Rule(Fault.SHORT_BODY, victim, after_bytes=CUT, only_with_range=True),
    )
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    assert run.layer(0)["resumed_at"] == [CUT, 2 * CUT]
    assert run.layer(0)["attempts"] == 3
    assert blob_gets(proxy, victim) == [None, f"bytes={CUT}-", f"bytes={2 * CUT}-"]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(proxy: FaultProxy, image: BuiltImage, status: int) -> None:
    victim = image.layers[1].digest
    proxy.add(Rule(Fault.STATUS, victim, status=status))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    assert run.layer(1)["attempts"] == 2
    assert run.layer(1)["resumed_at"] == []
    assert len(blob_gets(proxy, victim)) == 2


def test_manifest_and_config_errors_are_retried(proxy: FaultProxy, image: BuiltImage) -> None:
    proxy.add(
        Rule(Fault.STATUS, "/manifests/", status=503),
        Rule(Fault.RESET, image.config.digest, after_bytes=10),
    )
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    assert len(proxy.requests_for("/manifests/t")) == 2
    assert len(blob_gets(proxy, image.config.digest)) == 2


def test_stalled_manifest_is_retried(proxy: FaultProxy, image: BuiltImage) -> None:
    proxy.add(Rule(Fault.STALL, "/manifests/", after_bytes=10, stall=10.0))
    run = verify("--json", *FAST, *STALLED, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    assert run.json()["digest"] == image.manifest_digest
    assert [r.fault for r in proxy.requests_for("/manifests/t")] == [Fault.STALL, None]


def test_rate_limit_honours_retry_after(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.RATE_LIMIT, victim, retry_after="1"))
    run = verify(*FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    # The wait announced is the server's, not our backoff's.
    assert f"layer {victim}: " in run.stdout
    assert "rate limited (HTTP 429)" in run.stdout
    assert "retrying in 1.0s" in run.stdout
    assert len(blob_gets(proxy, victim)) == 2


def test_retry_after_beyond_the_time_cap_is_not_waited_for(
    proxy: FaultProxy, image: BuiltImage
) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.RATE_LIMIT, victim, retry_after="30", times=None))
    run = verify("--json", "--retry-max-time", "5", ref(proxy))
    assert run.exit_code == 3, run.stdout
    error = run.layer(0)["error"]
    assert error["kind"] == "registry-error"
    assert "429" in error["message"]
    assert len(blob_gets(proxy, victim)) == 1


@pytest.mark.parametrize(("offset", "verified"), [(-3600, True), (3600, False)])
def test_retry_after_as_an_http_date(
    proxy: FaultProxy, image: BuiltImage, offset: int, verified: bool
) -> None:
    victim = image.layers[0].digest
    when = email.utils.formatdate(time.time() + offset, usegmt=True)
    proxy.add(Rule(Fault.RATE_LIMIT, victim, retry_after=when))
    run = verify("--json", *FAST, ref(proxy))
    # A date already past is no wait; a date an hour ahead is beyond what we wait for.
    assert run.exit_code == (0 if verified else 3), run.stdout
    assert len(blob_gets(proxy, victim)) == (2 if verified else 1)


def test_retries_are_capped_in_attempts(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[1].digest
    proxy.add(Rule(Fault.STATUS, victim, status=503, times=None))
    run = verify("--json", "--retries", "2", ref(proxy))
    assert run.exit_code == 3
    layer = run.layer(1)
    assert layer["error"]["kind"] == "registry-error"
    assert "HTTP 503" in layer["error"]["message"]
    assert len(blob_gets(proxy, victim)) == 3
    assert run.layer(0)["verified"] is True  # one broken layer does not hide the others


def test_endless_stall_is_a_network_error(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.STALL, victim, after_bytes=CUT, times=None, stall=10.0))
    run = verify(*STALLED, "--retries", "1", ref(proxy))
    assert run.exit_code == 4, run.stdout + run.stderr
    message = one_line_error(run)
    assert victim in message
    assert "timed out" in message
    assert blob_gets(proxy, victim) == [None, f"bytes={CUT}-"]


# -- servers that ignore or mislabel ranges -----------------------------------------------


def test_ignored_range_restarts_cleanly(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(
        Rule(Fault.SHORT_BODY, victim, after_bytes=CUT),
        Rule(Fault.IGNORE_RANGE, victim, only_with_range=True),
    )
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 0, run.stdout + run.stderr
    layer = run.layer(0)
    assert layer["verified"] is True
    assert layer["attempts"] == 2
    assert layer["resumed_at"] == []  # the second answer was the whole blob
    assert layer["compressed_size"] == image.layers[0].blob.size
    gets = proxy.requests_for(f"/blobs/{victim}")
    assert [(g.range, g.status) for g in gets] == [(None, None), (f"bytes={CUT}-", 200)]


@pytest.mark.parametrize("shift", [1, -1, CUT])
def test_wrong_content_range_is_refused(proxy: FaultProxy, image: BuiltImage, shift: int) -> None:
    victim = image.layers[0].digest
    proxy.add(
        Rule(Fault.SHORT_BODY, victim, after_bytes=CUT),
        Rule(Fault.WRONG_CONTENT_RANGE, victim, only_with_range=True, shift=shift, times=None),
    )
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 3, run.stdout
    error = run.layer(0)["error"]
    assert "Content-Range" in error["message"]
    assert f"bytes {CUT}-" in error["message"]  # what we expected is named
    assert run.layer(0)["verified"] is False


# -- integrity failures: classified, never retried -----------------------------------------


def test_flipped_byte_is_a_digest_mismatch_not_retried(
    proxy: FaultProxy, image: BuiltImage
) -> None:
    victim = image.layers[0]
    proxy.add(Rule(Fault.FLIP_BYTE, victim.digest, after_bytes=5000, times=None))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 1
    error = run.layer(0)["error"]
    assert error["kind"] == "digest-mismatch"
    assert error["expected"] == victim.digest
    assert error["actual"] != victim.digest
    assert error["bytes_read"] == victim.blob.size
    assert len(blob_gets(proxy, victim.digest)) == 1


def test_flipped_byte_after_a_resume_is_caught(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0]
    proxy.add(
        Rule(Fault.SHORT_BODY, victim.digest, after_bytes=CUT),
        Rule(Fault.FLIP_BYTE, victim.digest, only_with_range=True, after_bytes=10),
    )
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 1
    layer = run.layer(0)
    assert layer["error"]["kind"] == "digest-mismatch"
    assert layer["resumed_at"] == [CUT]
    assert blob_gets(proxy, victim.digest) == [None, f"bytes={CUT}-"]


def test_body_longer_than_descriptor_is_a_size_mismatch(
    proxy: FaultProxy, image: BuiltImage
) -> None:
    victim = image.layers[1]
    proxy.add(Rule(Fault.LONG_BODY, victim.digest, extra=b"\0" * 512, times=None))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 1
    error = run.layer(1)["error"]
    assert error["kind"] == "size-mismatch"
    assert error["expected"] == str(victim.blob.size)
    assert error["actual"].startswith(">=")
    assert len(blob_gets(proxy, victim.digest)) == 1


def test_html_page_instead_of_a_blob_is_an_integrity_failure(
    proxy: FaultProxy, image: BuiltImage
) -> None:
    victim = image.layers[1]
    page = html_error_page()
    proxy.add(
        Rule(
            Fault.REPLACE_BODY,
            victim.digest,
            body=page,
            headers={"Content-Type": "text/html"},
            times=None,
        )
    )
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 1
    error = run.layer(1)["error"]
    assert error["kind"] == "size-mismatch"
    assert (error["expected"], error["actual"]) == (str(victim.blob.size), str(len(page)))
    assert len(blob_gets(proxy, victim.digest)) == 1

    text = verify(*FAST, ref(proxy))
    message = one_line_error(text)
    assert victim.digest in message
    assert str(len(page)) in message


def test_html_page_instead_of_a_manifest(proxy: FaultProxy, image: BuiltImage) -> None:
    proxy.add(
        Rule(
            Fault.REPLACE_BODY,
            "/manifests/",
            body=html_error_page(),
            headers={"Content-Type": "text/html"},
            times=None,
        )
    )
    tagged = verify(*FAST, ref(proxy))
    assert tagged.exit_code == 1
    assert "not valid JSON" in one_line_error(tagged)
    pinned = verify(*FAST, f"{proxy.host}/{REPO}@{image.manifest_digest}")
    assert pinned.exit_code == 1
    message = one_line_error(pinned)
    assert image.manifest_digest in message
    assert len(proxy.requests_for("/manifests/")) == 2  # one each: never retried


def test_wrong_docker_content_digest_on_manifest(proxy: FaultProxy, image: BuiltImage) -> None:
    wrong = "sha256:" + "e" * 64
    proxy.add(Rule(Fault.WRONG_DIGEST_HEADER, "/manifests/", digest_header=wrong, times=None))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 1
    error = run.json()["error"]
    assert error["kind"] == "content-digest-mismatch"
    assert (error["expected"], error["actual"]) == (wrong, image.manifest_digest)
    assert len(proxy.requests_for("/manifests/")) == 1


def test_wrong_docker_content_digest_on_blob(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    wrong = image.layers[1].digest  # the header names another blob: a cache mix-up
    proxy.add(Rule(Fault.WRONG_DIGEST_HEADER, victim, digest_header=wrong, times=None))
    run = verify("--json", *FAST, ref(proxy))
    assert run.exit_code == 1
    error = run.layer(0)["error"]
    assert error["kind"] == "content-digest-mismatch"
    assert (error["expected"], error["actual"]) == (victim, wrong)
    assert len(blob_gets(proxy, victim)) == 1


# -- redirects ---------------------------------------------------------------------------


def test_redirect_to_another_host(
    proxy: FaultProxy, image: BuiltImage, shared_registry: RunningRegistry
) -> None:
    victim = image.layers[0].digest
    with FaultProxy(shared_registry.url) as cdn:
        proxy.add(Rule(Fault.REDIRECT, victim, location=f"{cdn.url}/v2/{REPO}/blobs/{victim}"))
        # The other host breaks off once too: the resume goes to the registry again.
        cdn.add(Rule(Fault.SHORT_BODY, victim, after_bytes=CUT))
        run = verify("--json", *FAST, ref(proxy))
        assert run.exit_code == 0, run.stdout + run.stderr
        assert run.layer(0)["resumed_at"] == [CUT]
        [hop] = cdn.requests_for(f"/blobs/{victim}")
        assert hop.range is None
        assert hop.authorization is False
    assert blob_gets(proxy, victim) == [None, f"bytes={CUT}-"]


def test_credentials_do_not_follow_a_redirect_to_another_host(
    basic_auth_registry: BasicAuthRegistry, image: BuiltImage
) -> None:
    push_image(
        basic_auth_registry.url, REPO, "t", image, auth_header=basic_auth_registry.auth_header
    )
    victim = image.layers[0].digest
    with (
        FaultProxy(basic_auth_registry.url) as front,
        FaultProxy(basic_auth_registry.url) as cdn,
    ):
        # The other host is the same registry, so it would accept the credentials: only the
        # client's discipline keeps them from it (it answers 401 and the pull fails).
        front.add(Rule(Fault.REDIRECT, victim, location=f"{cdn.url}/v2/{REPO}/blobs/{victim}"))
        run = CliRunner().invoke(
            verify_app,
            ["--json", *FAST, "-u", basic_auth_registry.username, "--password-stdin", ref(front)],
            input=basic_auth_registry.password + "\n",
        )
        assert [r.authorization for r in front.requests_for(f"/blobs/{victim}")] == [True]
        assert [r.authorization for r in cdn.requests_for(f"/blobs/{victim}")] == [False]
        assert run.exit_code == 3, run.stdout
        error = json.loads(run.stdout)["images"][0]["layers"][0]["error"]
        assert error["kind"] == "auth-error", error
        assert "401" in error["message"]


def test_redirect_loop_is_an_error(proxy: FaultProxy, image: BuiltImage) -> None:
    victim = image.layers[0].digest
    proxy.add(Rule(Fault.REDIRECT, victim, times=None))  # to itself, forever
    run = verify(*FAST, ref(proxy))
    assert run.exit_code == 3
    message = one_line_error(run)
    assert "redirect loop" in message
    assert victim in message
    assert len(blob_gets(proxy, victim)) == 1  # the Location names the URL just asked


def test_redirect_ping_pong_between_hosts(
    proxy: FaultProxy, image: BuiltImage, shared_registry: RunningRegistry
) -> None:
    victim = image.layers[0].digest
    path = f"/v2/{REPO}/blobs/{victim}"
    with FaultProxy(shared_registry.url) as other:
        proxy.add(Rule(Fault.REDIRECT, victim, location=f"{other.url}{path}", times=None))
        other.add(Rule(Fault.REDIRECT, victim, location=f"{proxy.url}{path}", times=None))
        run = verify(*FAST, ref(proxy))
    assert run.exit_code == 3
    assert "redirect loop" in one_line_error(run)


def test_an_http_chunk_end_seen_after_its_data_is_not_the_end_of_the_body() -> None:
    """aiohttp reports a chunk boundary met after its bytes were read as (b"", True);
    only (b"", False) ends the body. Timing decides when that happens on a real socket,
    so the stream reader is driven by hand here."""

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        reader = aiohttp.StreamReader(BaseProtocol(loop), 1 << 16, loop=loop)
        chunks = iter_chunks(reader)
        reader.begin_http_chunk_receiving()
        reader.feed_data(b"first")
        got = [await anext(chunks)]
        reader.end_http_chunk_receiving()  # the boundary, after "first" was consumed
        reader.begin_http_chunk_receiving()
        reader.feed_data(b"second")
        reader.end_http_chunk_receiving()
        reader.feed_eof()
        return got + [chunk async for chunk in chunks]

    assert asyncio.run(main()) == [b"first", b"second"]
