"""A persistent record of blobs an audit verified (SQLite), so a re-audit is incremental.

Layer: I/O (a local SQLite file; synchronous: each call is a sub-millisecond statement).
Only verified blobs are recorded, each committed as soon as it verified, so an audit that
is interrupted resumes where it stopped. A failed blob is never recorded: it is fetched
again next time. Keyed by host, digest and compression: a blob verified on one mirror
says nothing about another, nor one inflated as gzip about the same bytes named zstd.
The actual diff_id is kept, since images disagreeing about a layer's diff_id is a
finding the join makes without fetching the layer again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from puller.errors import UsageError

_TABLE = "verified_blobs"
_COLUMNS = ("host", "digest", "compression", "size", "diff_id", "verified_at")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    host TEXT NOT NULL,
    digest TEXT NOT NULL,
    compression TEXT NOT NULL,
    size INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    verified_at REAL NOT NULL,
    PRIMARY KEY (host, digest, compression)
)
"""


@dataclass(frozen=True, slots=True)
class CachedBlob:
    host: str
    digest: str
    size: int
    diff_id: str  # "" for a config blob (not a layer)
    verified_at: float


class AuditCache:
    """``with AuditCache(path) as cache``: lookups honour ``max_age``; ``recheck`` skips them."""

    def __init__(
        self,
        path: Path,
        *,
        max_age: float | None = None,
        recheck: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.problem: str | None = None  # set when the file failed mid-run; then unused
        self.max_age = max_age
        self.recheck = recheck
        self._clock = clock
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None)
            # WAL and NORMAL sync: a commit per verified blob stays cheap, and a crash loses
            # at most the last few records (which are simply verified again).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            columns = tuple(row[1] for row in self._db.execute(f"PRAGMA table_info({_TABLE})"))
            if columns and columns != _COLUMNS:
                # A record of another shape cannot say what was verified as what: start over
                # (the cache only saves work; dropping it costs a re-verification).
                self._db.execute(f"DROP TABLE {_TABLE}")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise UsageError(f"cannot use {path} as an audit cache: {exc}") from exc

    def lookup(self, host: str, digest: str, compression: str, size: int) -> CachedBlob | None:
        """The record of this blob, verified as ``compression``, if recent enough to trust."""
        if self.recheck or self.problem is not None:
            return None
        try:
            row = self._db.execute(
                "SELECT size, diff_id, verified_at FROM verified_blobs "
                "WHERE host=? AND digest=? AND compression=?",
                (host, digest, compression),
            ).fetchone()
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None
        if row is None:
            return None
        cached = CachedBlob(host, digest, int(row[0]), str(row[1]), float(row[2]))
        if cached.size != size:
            return None  # a descriptor with another size is another claim: check it
        if self.max_age is not None and self._clock() - cached.verified_at > self.max_age:
            return None
        return cached

    def record(self, host: str, digest: str, compression: str, size: int, diff_id: str) -> None:
        self._write(
            "INSERT OR REPLACE INTO verified_blobs "
            "(host, digest, compression, size, diff_id, verified_at) VALUES (?, ?, ?, ?, ?, ?)",
            (host, digest, compression, size, diff_id, self._clock()),
        )

    def forget(self, host: str, digest: str, compression: str) -> None:
        """Drop a record: the blob failed when checked again."""
        self._write(
            "DELETE FROM verified_blobs WHERE host=? AND digest=? AND compression=?",
            (host, digest, compression),
        )

    def _write(self, statement: str, values: tuple[object, ...]) -> None:
        if self.problem is not None:
            return
        try:
            self._db.execute(statement, values)
        except sqlite3.Error as exc:
            self._give_up(exc)

    def _give_up(self, exc: sqlite3.Error) -> None:
        # The cache only saves work: a file that fails mid-audit (disk full, locked) is
        # set aside and the audit goes on, verifying everything itself.
        self.problem = f"{type(exc).__name__}: {exc}"

    def count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM verified_blobs").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    cleaned = text.strip().lower()
    unit = cleaned[-1:] if cleaned[-1:] in units else "s"
    number = cleaned[:-1] if cleaned[-1:] in units else cleaned
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UsageError(
            f"invalid duration {text!r}: expected a number with s, m, h, d or w"
        ) from None
    if value < 0 or value != value:
        raise UsageError(f"invalid duration {text!r}: must not be negative")
    return value
