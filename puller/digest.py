"""Content digests (``algorithm:hex``) and the algorithms we can verify.

Layer: pure (no I/O).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from puller.errors import InvalidContent

# Hex lengths per algorithm (OCI image spec, "Digests"). Anything else is refused
# rather than guessed at: a digest we cannot check verifies nothing.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """Twelve hex characters, as docker prints image IDs and layers."""
        return self.hex[:12]

    def hasher(self) -> Hasher:
        return hashlib.new(self.algorithm)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def parse_digest(text: str, *, what: str = "digest") -> Digest:
    """Build a Digest from untrusted text; raise InvalidContent for anything we cannot verify."""
    shown = text if len(text) <= 100 else text[:100] + "..."
    match = _DIGEST_RE.match(text)
    if match is None:
        raise InvalidContent(f"invalid {what} {shown!r}: not of the form algorithm:hex")
    algorithm, hex_part = match.group(1), match.group(2)
    expected_len = _HEX_LENGTHS.get(algorithm)
    if expected_len is None:
        raise InvalidContent(f"unsupported {what} algorithm {algorithm!r} in {shown!r}")
    if len(hex_part) != expected_len or not re.fullmatch(r"[0-9a-f]+", hex_part):
        raise InvalidContent(
            f"invalid {what} {shown!r}: {algorithm} needs {expected_len} lowercase hex characters"
        )
    return Digest(algorithm, hex_part)


def is_digest(text: str) -> bool:
    try:
        parse_digest(text)
    except InvalidContent:
        return False
    return True
