"""Run real registries (CNCF distribution, Debian's ``docker-registry``) for tests and demos.

Layer: test kit, does process, file and network I/O (loopback only). Synchronous: it runs
in pytest fixtures and scripts.

A registry is configured by ``RegistryConfig`` (rendered to YAML by hand, no PyYAML), started
by ``start_registry`` and stopped by ``RunningRegistry.stop`` or by leaving its ``with``
block. The storage helpers (``blob_path``, ``flip_byte``, ``truncate_blob``,
``delete_blob_file``) damage what the registry serves, because distribution never re-hashes
a blob when it serves it: corruption made on disk reaches the client unchanged.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kit.client import basic_auth_header, request
from tests.kit.serving import Stoppable

DEFAULT_BINARY = "/usr/bin/docker-registry"
_READY_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def require_binary(path: str) -> None:
    """Raise a RuntimeError that names a missing binary and how to install it.

    A missing real component fails the test run; it is never skipped.
    """
    resolved = path if os.path.isabs(path) else shutil.which(path)
    if resolved is None or not os.access(resolved, os.X_OK):
        raise RuntimeError(
            f"required binary {path!r} is not installed or not executable; "
            "run `make deps` to install the test dependencies "
            "(docker-registry, skopeo, umoci, apache2-utils)"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def make_htpasswd(path: Path, users: Mapping[str, str]) -> Path:
    """Write a bcrypt htpasswd file (``htpasswd -B``), the only kind distribution accepts."""
    require_binary("/usr/bin/htpasswd")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    for index, (user, password) in enumerate(users.items()):
        flags = "-Bbc" if index == 0 else "-Bb"
        # -b takes the password on the command line: acceptable for a throwaway test secret.
        subprocess.run(
            ["/usr/bin/htpasswd", flags, str(path), user, password],
            check=True,
            capture_output=True,
        )
    return path


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class TokenAuthConfig:
    """``auth.token``: the registry accepts JWTs signed by a key in ``rootcertbundle``."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass(slots=True)
class RegistryConfig:
    """Everything that goes into the registry's YAML config.

    ``extra`` is deep-merged into the rendered tree last, so it can set or override any key
    (e.g. ``{"http": {"relativeurls": True}}``).
    """

    root: Path
    port: int = 0  # 0: pick a free port when rendering/starting
    host: str = "127.0.0.1"
    delete_enabled: bool = True
    nosniff_header: bool = True
    descriptor_cache: bool = True  # storage.cache.blobdescriptor: inmemory
    htpasswd: Path | None = None
    realm: str = "pull-verify-test"
    token_auth: TokenAuthConfig | None = None
    proxy_remote_url: str | None = None
    proxy_username: str | None = None
    proxy_password: str | None = None
    http_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def storage_root(self) -> Path:
        return self.root / "storage"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def tree(self) -> dict[str, Any]:
        """The configuration as nested dicts (before rendering)."""
        if self.htpasswd is not None and self.token_auth is not None:
            raise ValueError("a registry takes one auth method: htpasswd or token_auth")
        if self.port == 0:
            self.port = free_port(self.host)
        storage: dict[str, Any] = {
            "filesystem": {"rootdirectory": str(self.storage_root)},
            "delete": {"enabled": self.delete_enabled},
            "maintenance": {"uploadpurging": {"enabled": False}},
        }
        if self.descriptor_cache:
            storage["cache"] = {"blobdescriptor": "inmemory"}
        http: dict[str, Any] = {
            "addr": f"{self.host}:{self.port}",
            "secret": self.http_secret,
        }
        if self.nosniff_header:
            http["headers"] = {"X-Content-Type-Options": ["nosniff"]}
        tree: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": storage,
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.htpasswd is not None:
            tree["auth"] = {"htpasswd": {"realm": self.realm, "path": str(self.htpasswd)}}
        if self.token_auth is not None:
            tok = self.token_auth
            tree["auth"] = {
                "token": {
                    "realm": tok.realm,
                    "service": tok.service,
                    "issuer": tok.issuer,
                    "rootcertbundle": str(tok.rootcertbundle),
                }
            }
        if self.proxy_remote_url is not None:
            proxy: dict[str, Any] = {"remoteurl": self.proxy_remote_url}
            if self.proxy_username is not None:
                proxy["username"] = self.proxy_username
                proxy["password"] = self.proxy_password or ""
            tree["proxy"] = proxy
        _deep_merge(tree, self.extra)
        return tree

    def render(self) -> str:
        """The YAML text of the configuration."""
        return "".join(_yaml_lines(self.tree(), 0))


def _deep_merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | Path):
        # A JSON string is a valid YAML double-quoted scalar.
        return json.dumps(str(value))
    raise TypeError(f"cannot render {type(value).__name__} in the registry config")


def _yaml_lines(node: Mapping[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, value in node.items():
        name = json.dumps(str(key))
        if isinstance(value, Mapping):
            lines.append(f"{pad}{name}:\n")
            lines.extend(_yaml_lines(value, indent + 2))
        elif isinstance(value, list | tuple):
            lines.append(f"{pad}{name}:\n")
            lines.extend(f"{pad}  - {_yaml_scalar(item)}\n" for item in value)
        else:
            lines.append(f"{pad}{name}: {_yaml_scalar(value)}\n")
    return lines


# ---------------------------------------------------------------------------------------
# Running


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port`` (Linux /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        links = {os.readlink(fd) for fd in fd_dir.iterdir()}
    except OSError:
        return False
    return not inodes.isdisjoint(links)


class RegistryStartError(RuntimeError):
    """The registry did not come up; the message ends with the tail of its log."""


# Registries still running when the interpreter exits (a script interrupted by Ctrl-C, a
# test that forgot ``stop``) are stopped then, so no registry outlives its owner.
_LIVE: set[RunningRegistry] = set()


@atexit.register
def _stop_leftovers() -> None:
    for registry in list(_LIVE):
        registry.stop()


class RunningRegistry(Stoppable):
    """A ``docker-registry serve`` process on a loopback port, with storage in ``root``."""

    def __init__(self, config: RegistryConfig, binary: str = DEFAULT_BINARY) -> None:
        self.config = config
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses and paths

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as a reference's registry part."""
        return f"{self.config.host}:{self.config.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def root(self) -> Path:
        return self.config.root

    @property
    def storage_root(self) -> Path:
        return self.config.storage_root

    @property
    def log_path(self) -> Path:
        return self.config.log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def access_log(self) -> list[str]:
        """The registry's access-log lines (``"GET /v2/... HTTP/1.1" 200 1234``), oldest first.

        Useful to count requests (a blob fetched once, a resume with a second GET); the
        lines do not show request headers such as ``Range``.
        """
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if '] "' in line and " HTTP/" in line]

    # -- lifecycle

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"registry at {self.url} is already running")
        require_binary(self.binary)
        if self.config.port and not _port_is_free(self.config.host, self.config.port):
            raise RegistryStartError(
                f"cannot start a registry on {self.host}: address already in use"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_root.mkdir(parents=True, exist_ok=True)
        self.config.config_path.write_text(self.config.render())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "serve", str(self.config.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        last_error = "no answer yet"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RegistryStartError(
                    f"docker-registry exited (code {code}) before answering on {self.url}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                resp = request("GET", f"{self.url}/v2/", timeout=1.0)
                # Someone else may answer on the port: only our process's listener counts.
                if resp.status in (200, 401) and _listens_on(proc.pid, self.config.port):
                    return
                last_error = f"HTTP {resp.status}"
            except OSError as exc:
                last_error = repr(exc)
            if time.monotonic() > deadline:
                raise RegistryStartError(
                    f"docker-registry did not answer GET {self.url}/v2/ within "
                    f"{_READY_TIMEOUT:.0f} s (last: {last_error}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start on the same port, e.g. to drop the in-memory descriptor cache."""
        self.stop()
        self.start()

    # -- storage, to damage what the registry serves

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        if algorithm != "sha256" or len(hexpart) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return (
            self.storage_root / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
        )

    def _existing_blob(self, digest: str) -> Path:
        path = self.blob_path(digest)
        if not path.is_file():
            raise FileNotFoundError(f"registry {self.url} stores no blob {digest} ({path})")
        return path

    def flip_byte(self, digest: str, offset: int | None = None) -> int:
        """Invert every bit of one byte of the stored blob (middle by default); return offset.

        The size stays the same, so no restart is needed: the registry serves the damage.
        """
        path = self._existing_blob(digest)
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"blob {digest} is empty: no byte to flip")
        at = size // 2 if offset is None else offset
        if not 0 <= at < size:
            raise ValueError(f"offset {at} outside blob {digest} of {size} bytes")
        with path.open("r+b") as fh:
            fh.seek(at)
            old = fh.read(1)
            fh.seek(at)
            fh.write(bytes([old[0] ^ 0xFF]))
        return at

    def truncate_blob(self, digest: str, size: int) -> None:
        """Cut the stored blob to ``size`` bytes.

        The registry caches descriptors (with sizes) in memory: call ``restart()`` after this
        if the served ``Content-Length`` must change too.
        """
        path = self._existing_blob(digest)
        if size > path.stat().st_size:
            raise ValueError(f"truncate_blob({digest}, {size}) would grow the blob")
        os.truncate(path, size)

    def delete_blob_file(self, digest: str) -> None:
        """Remove the stored blob's data file.

        Until ``restart()`` the descriptor cache still vouches for the blob: a GET answers 200
        with the old ``Content-Length`` and then closes without a body. After a restart the
        registry answers 404 (BLOB_UNKNOWN).
        """
        self._existing_blob(digest).unlink()

    def replace_blob(self, digest: str, data: bytes) -> None:
        """Overwrite the stored blob with other bytes under the same digest.

        Restart afterwards if the length changed (the descriptor cache keeps the old size).
        """
        self._existing_blob(digest).write_bytes(data)


def start_registry(config: RegistryConfig, binary: str = DEFAULT_BINARY) -> RunningRegistry:
    """Start a registry and wait until ``GET /v2/`` answers (200, or 401 with auth).

    With ``config.port == 0`` a free port is picked; if another process takes it between
    the pick and the registry's bind, a new port is tried (three attempts in all).
    """
    auto_port = config.port == 0
    for attempt in range(3):
        registry = RunningRegistry(config, binary)
        try:
            registry.start()
        except RegistryStartError as exc:
            if not auto_port or attempt == 2 or "address already in use" not in str(exc):
                raise
            config.port = 0
        else:
            return registry
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class BasicAuthRegistry:
    """A running registry with htpasswd auth and the one user it knows."""

    registry: RunningRegistry
    username: str
    password: str

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def auth_header(self) -> str:
        return basic_auth_header(self.username, self.password)


def start_basic_auth_registry(
    root: Path, *, username: str = "tester", password: str | None = None
) -> BasicAuthRegistry:
    """A registry behind HTTP Basic auth with a generated password (unless given)."""
    secret = password if password is not None else secrets.token_urlsafe(16)
    htpasswd = make_htpasswd(root / "htpasswd", {username: secret})
    registry = start_registry(RegistryConfig(root=root, htpasswd=htpasswd))
    return BasicAuthRegistry(registry, username, secret)
