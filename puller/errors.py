"""The one error hierarchy of pull-verify, and the exit code each error maps to.

Layer: pure (no I/O). Every error the tool reports to a user is a ``PullVerifyError``;
anything else reaching the CLI is a bug and is shown as one.

    PullVerifyError                    exit code, one human sentence
    ├── UsageError                     2  the command line or a reference is wrong
    │   └── InvalidReference           2
    ├── IntegrityError                 1  content is not what it claims to be (never retried)
    │   ├── DigestMismatch             1  a blob or manifest hashes to another digest
    │   ├── ContentDigestMismatch      1  Docker-Content-Digest disagrees with the bytes served
    │   ├── SizeMismatch               1  more or fewer bytes than the descriptor says
    │   ├── DiffIDMismatch             1  uncompressed layer differs from the config's diff_id
    │   ├── DecompressionError         1  corrupt, truncated or padded compressed stream
    │   ├── LayerTooLarge              1  uncompressed layer over --max-layer-size (a bomb)
    │   ├── BlobMissing                1  the manifest names a blob the registry does not have
    │   └── InvalidContent             1  malformed manifest, index or config
    ├── RegistryError                  3  the registry answered, but not with what we need
    │   ├── AuthError                  3  credentials refused or missing
    │   ├── NotFound                   3  unknown repository, tag or manifest
    │   └── UnsupportedContent         3  a manifest kind or platform we cannot verify
    ├── NetworkError                   4  no usable answer: connection, TLS, timeout
    │   └── TLSError                   4
    │       └── CertificateError       4  the server's certificate is not trusted
    └── Interrupted                  130  Ctrl-C

The ``retryable`` flag marks errors that a retry may cure (resets, 5xx, 429, stalls).
Integrity errors are never retryable: retrying them into success would be a lie.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_INTEGRITY = 1
EXIT_USAGE = 2
EXIT_REGISTRY = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130


class PullVerifyError(Exception):
    """Base of every error shown to users: one sentence, one exit code."""

    exit_code: int = EXIT_REGISTRY
    kind: str = "error"
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class UsageError(PullVerifyError):
    exit_code = EXIT_USAGE
    kind = "usage"


class InvalidReference(UsageError):
    kind = "invalid-reference"


class IntegrityError(PullVerifyError):
    """Content that is not what it claims to be. Carries what was expected and found."""

    exit_code = EXIT_INTEGRITY
    kind = "integrity"

    def __init__(
        self,
        message: str,
        *,
        subject: str = "",
        expected: str | None = None,
        actual: str | None = None,
        bytes_read: int | None = None,
    ) -> None:
        super().__init__(message, retryable=False)
        self.subject = subject
        self.expected = expected
        self.actual = actual
        self.bytes_read = bytes_read


class DigestMismatch(IntegrityError):
    kind = "digest-mismatch"


class ContentDigestMismatch(IntegrityError):
    kind = "content-digest-mismatch"


class SizeMismatch(IntegrityError):
    kind = "size-mismatch"


class DiffIDMismatch(IntegrityError):
    kind = "diff-id-mismatch"


class DecompressionError(IntegrityError):
    kind = "decompression-error"


class LayerTooLarge(IntegrityError):
    kind = "layer-too-large"


class BlobMissing(IntegrityError):
    kind = "blob-missing"


class InvalidContent(IntegrityError):
    kind = "invalid-content"


class RegistryError(PullVerifyError):
    """The registry answered, but not with what we need. ``status`` and ``codes`` as sent."""

    exit_code = EXIT_REGISTRY
    kind = "registry-error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        codes: tuple[str, ...] = (),
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status
        self.codes = codes
        self.retry_after = retry_after


class AuthError(RegistryError):
    kind = "auth-error"


class NotFound(RegistryError):
    kind = "not-found"


class UnsupportedContent(RegistryError):
    kind = "unsupported"


class NetworkError(PullVerifyError):
    exit_code = EXIT_NETWORK
    kind = "network-error"
    retryable = True


class TLSError(NetworkError):
    kind = "tls-error"
    retryable = False


class CertificateError(TLSError):
    kind = "certificate-error"


class Interrupted(PullVerifyError):
    exit_code = EXIT_INTERRUPTED
    kind = "interrupted"


@dataclass(frozen=True, slots=True)
class ExitCode:
    code: int
    meaning: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "verified: every check passed"),
    ExitCode(EXIT_INTEGRITY, "integrity failure: content differs from what was claimed"),
    ExitCode(EXIT_USAGE, "usage error or bad reference"),
    ExitCode(EXIT_REGISTRY, "registry or authentication error (unknown tag, denied, ...)"),
    ExitCode(EXIT_NETWORK, "network error (connection, TLS, timeout)"),
    ExitCode(EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


def most_severe(errors: list[PullVerifyError]) -> PullVerifyError | None:
    """The error whose exit code wins when several layers fail: integrity first."""
    order = {EXIT_INTEGRITY: 0, EXIT_REGISTRY: 1, EXIT_NETWORK: 2, EXIT_USAGE: 3}
    if not errors:
        return None
    return min(errors, key=lambda e: order.get(e.exit_code, 9))


def write_failure(path: object, exc: OSError) -> UsageError:
    """A local file that cannot be written: the user's path or disk, not the image."""
    reason = exc.strerror or exc.__class__.__name__
    return UsageError(f"cannot write {path}: {reason}")
