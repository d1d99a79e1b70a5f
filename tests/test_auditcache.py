"""The SQLite record of verified blobs: max-age, recheck, resume across processes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puller.auditcache import AuditCache, parse_duration
from puller.errors import UsageError

HOST = "127.0.0.1:5000"
DIGEST = "sha256:" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_verified_blob_is_trusted_until_max_age(tmp_path: Path) -> None:
    clock = Clock()
    with AuditCache(tmp_path / "c.db", max_age=3600, clock=clock) as cache:
        assert cache.lookup(HOST, DIGEST, "gzip", 10) is None
        cache.record(HOST, DIGEST, "gzip", 10, "sha256:diff")
        hit = cache.lookup(HOST, DIGEST, "gzip", 10)
        assert hit is not None
        assert (hit.diff_id, hit.verified_at) == ("sha256:diff", clock.now)
        assert cache.lookup("other:5000", DIGEST, "gzip", 10) is None  # another mirror
        assert cache.lookup(HOST, DIGEST, "gzip", 11) is None  # another claim about its size
        assert cache.lookup(HOST, DIGEST, "zstd", 10) is None  # the same bytes named zstd
        clock.now += 3600
        assert cache.lookup(HOST, DIGEST, "gzip", 10) is not None
        clock.now += 1
        assert cache.lookup(HOST, DIGEST, "gzip", 10) is None


def test_records_survive_the_process_and_recheck_ignores_them(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    with AuditCache(db) as cache:
        cache.record(HOST, DIGEST, "gzip", 10, "")
    with AuditCache(db) as cache:  # a new run, as after an interruption
        assert cache.count() == 1
        assert cache.lookup(HOST, DIGEST, "gzip", 10) is not None
    with AuditCache(db, recheck=True) as cache:
        assert cache.lookup(HOST, DIGEST, "gzip", 10) is None
        cache.forget(HOST, DIGEST, "gzip")
        assert cache.count() == 0


def test_a_file_that_is_not_a_database_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "c.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UsageError, match=r"cannot use .*c\.db as an audit cache"):
        AuditCache(bad)


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("12h") == 43200
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("2w") == 14 * 86400
    for bad in ("", "soon", "-1h", "h", "nan"):
        with pytest.raises(UsageError):
            parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from("smhdw"))
def test_duration_units_scale(number: int, unit: str) -> None:
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{number}{unit}") == number * scale


def test_a_record_of_an_older_shape_is_dropped_not_trusted(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    old = sqlite3.connect(str(db))
    old.execute(
        "CREATE TABLE verified_blobs (host TEXT, digest TEXT, size INTEGER, diff_id TEXT, "
        "verified_at REAL, PRIMARY KEY (host, digest))"
    )
    old.execute("INSERT INTO verified_blobs VALUES (?, ?, 10, '', 0)", (HOST, DIGEST))
    old.commit()
    old.close()
    with AuditCache(db) as cache:
        assert cache.count() == 0
        cache.record(HOST, DIGEST, "gzip", 10, "")
        assert cache.lookup(HOST, DIGEST, "gzip", 10) is not None


def test_a_cache_that_fails_mid_run_is_set_aside_not_raised(tmp_path: Path) -> None:
    cache = AuditCache(tmp_path / "c.db")
    cache.record(HOST, DIGEST, "gzip", 10, "")
    cache.close()  # from here every statement fails, as with a vanished or locked file
    cache.record(HOST, "sha256:" + "1" * 64, "gzip", 10, "")
    assert cache.problem is not None
    assert cache.lookup(HOST, DIGEST, "gzip", 10) is None
    cache.forget(HOST, DIGEST, "gzip")
