"""ThreadedFeeder: one thread per layer while layers crowd the cores, three otherwise, and a
move from one to three in the middle of a layer; the verdict never depends on the shape."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading

import anyio
import pytest
import zstandard

from puller.digest import Digest
from puller.errors import DiffIDMismatch, SizeMismatch
from puller.feed import Crowd, ThreadedFeeder
from puller.mediatypes import Compression
from puller.verify import LayerVerdict, LayerVerifier

RAW = os.urandom(300_000) + b"a line of a text file in a layer\n" * 60_000
GZIP_MULTI = gzip.compress(RAW[:500_000]) + gzip.compress(RAW[500_000:])
ZSTD = zstandard.ZstdCompressor().compress(RAW)
CHUNK = 16 << 10


def verifier(blob: bytes, compression: Compression, diff_id: Digest | None = None) -> LayerVerifier:
    return LayerVerifier(
        digest=Digest.of(blob),
        size=len(blob),
        compression=compression,
        diff_id=diff_id or Digest.of(RAW),
        subject="layer under test",
    )


def stage_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("feedtest-")}


async def feed_all(feeder: ThreadedFeeder, blob: bytes, on_chunk: object = None) -> list[set[str]]:
    """Feed ``blob`` in chunks; the stage threads alive after each chunk."""
    seen = []
    for index, start in enumerate(range(0, len(blob), CHUNK)):
        if callable(on_chunk):
            on_chunk(index)
        await feeder.feed(blob[start : start + CHUNK])
        seen.append(stage_threads())
    return seen


def run_feeder(
    blob: bytes, compression: Compression, crowd: Crowd | None, on_chunk: object = None
) -> tuple[LayerVerdict, list[set[str]]]:
    v = verifier(blob, compression)

    async def main() -> list[set[str]]:
        async with ThreadedFeeder(v, name="feedtest", crowd=crowd, max_pending=64 << 10) as f:
            return await feed_all(f, blob, on_chunk)

    seen = anyio.run(main)
    assert stage_threads() == set(), "every stage thread ends with close()"
    return v.finish(), seen


EXPECTED = LayerVerdict(Digest.of(GZIP_MULTI), Digest.of(RAW), len(GZIP_MULTI), len(RAW))
SPLIT = {"feedtest-digest", "feedtest-inflate", "feedtest-diff-id"}


def test_crowded_means_as_many_layers_as_cores_within_the_jobs_limit() -> None:
    crowd = Crowd(cores=2, jobs=4)
    assert not crowd.crowded
    crowd.unfinished = 1
    assert not crowd.crowded
    crowd.unfinished = 2
    assert crowd.crowded
    one_job = Crowd(cores=2, jobs=1)
    one_job.unfinished = 10
    assert not one_job.crowded


def test_a_crowded_layer_uses_one_thread() -> None:
    crowd = Crowd(cores=2, jobs=4)
    crowd.unfinished = 4
    verdict, seen = run_feeder(GZIP_MULTI, Compression.GZIP, crowd)
    assert verdict == EXPECTED
    assert all(alive <= {"feedtest-verify"} for alive in seen)
    assert any(alive == {"feedtest-verify"} for alive in seen)


def test_a_lone_layer_uses_three_threads() -> None:
    crowd = Crowd(cores=2, jobs=4)
    crowd.unfinished = 1
    verdict, seen = run_feeder(GZIP_MULTI, Compression.GZIP, crowd)
    assert verdict == EXPECTED
    assert "feedtest-verify" not in set().union(*seen)
    assert any(alive == SPLIT for alive in seen)


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_a_layer_moves_to_three_threads_when_the_others_finish(compression: Compression) -> None:
    blob = GZIP_MULTI if compression is Compression.GZIP else ZSTD
    crowd = Crowd(cores=2, jobs=4)
    crowd.unfinished = 3
    chunks = -(-len(blob) // CHUNK)

    def others_finish(index: int) -> None:
        if index == chunks // 2:
            crowd.unfinished = 1

    verdict, seen = run_feeder(blob, compression, crowd, others_finish)
    assert verdict == LayerVerdict(Digest.of(blob), Digest.of(RAW), len(blob), len(RAW))
    before, after = seen[: chunks // 2], seen[chunks // 2 :]
    assert "feedtest-digest" not in set().union(*before)
    assert set().union(*after) >= SPLIT


def test_an_error_in_the_single_thread_is_raised_after_the_move() -> None:
    crowd = Crowd(cores=2, jobs=4)
    crowd.unfinished = 2
    blob = GZIP_MULTI
    short = verifier(blob[: len(blob) // 2], Compression.GZIP)  # descriptor says half the size

    async def main() -> None:
        async with ThreadedFeeder(short, name="feedtest", crowd=crowd) as feeder:
            await feeder.feed(blob[: len(blob) // 2 + 1])  # one byte past the declared size
            crowd.unfinished = 1  # the move, most likely before the single thread has run
            await feeder.feed(blob[len(blob) // 2 + 1 :])

    with pytest.raises(SizeMismatch):
        anyio.run(main)
    assert stage_threads() == set()
    # The three threads did nothing after the failure: the chunk after it would fit the
    # declared size and be counted, hashing a blob with a gap in it.
    assert short.bytes_read == 0


def test_a_wrong_diff_id_is_found_whatever_the_shape() -> None:
    for unfinished in (1, 4):
        crowd = Crowd(cores=2, jobs=4)
        crowd.unfinished = unfinished
        v = verifier(GZIP_MULTI, Compression.GZIP, diff_id=Digest.of(b"another tar"))

        async def main(v: LayerVerifier = v, crowd: Crowd = crowd) -> None:
            async with ThreadedFeeder(v, name="feedtest", crowd=crowd) as feeder:
                await feed_all(feeder, GZIP_MULTI)

        anyio.run(main)
        with pytest.raises(DiffIDMismatch):
            v.finish()


def test_cores_are_those_the_process_may_run_on() -> None:
    """A container pinned to one core of a big host must not crowd it with threads."""
    pinned = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c",
         "from puller.feed import Crowd; print(Crowd(jobs=4).cores)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert pinned.stdout.strip() == "1"
    assert Crowd(jobs=4).cores == len(os.sched_getaffinity(0))
