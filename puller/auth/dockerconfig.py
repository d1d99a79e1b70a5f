"""Credentials from the docker client's config: ``auths``, ``credsStore``, ``credHelpers``.

Layer: I/O (reads ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, runs
``docker-credential-<name> get``). No aiohttp or anyio: callers run it in a thread.

The order docker uses: a ``credHelpers`` entry for the host, else the ``credsStore`` helper,
else the ``auths`` entry. A helper that has nothing for the host (it exits non-zero saying
so) falls through to ``auths``. Keys are matched by host: ``https://host/v1/``, ``host`` and
``http://host`` all name the same registry, and Docker Hub's spellings
(``https://index.docker.io/v1/``, ``index.docker.io``, ``docker.io``, ``registry-1.docker.io``)
all name Docker Hub. Nothing read here is ever put in a message.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puller.auth.tokens import Credentials
from puller.errors import AuthError

DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # the key `docker login` writes for Hub
_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
IDENTITY_TOKEN_USER = "<token>"  # a helper's Username when Secret is an identity token
HELPER_TIMEOUT = 60.0
MAX_CONFIG_BYTES = 4 << 20


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def normalize_host(key: str) -> str:
    """The registry a config key names: scheme and path dropped, Hub spellings merged."""
    text = key.strip().lower()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    host = text.split("/", 1)[0]
    return "docker.io" if host in _HUB_ALIASES else host


@dataclass(frozen=True, slots=True)
class DockerConfig:
    path: Path
    auths: Mapping[str, Any]
    creds_store: str | None
    cred_helpers: Mapping[str, str]

    def helper_for(self, registry: str) -> str | None:
        wanted = normalize_host(registry)
        for key, name in self.cred_helpers.items():
            if normalize_host(key) == wanted:
                return name
        return self.creds_store

    def auth_entry(self, registry: str) -> tuple[str, Mapping[str, Any]] | None:
        """The ``auths`` entry for ``registry``: an exact key first, then any spelling."""
        if isinstance(self.auths.get(registry), Mapping):
            return registry, self.auths[registry]
        wanted = normalize_host(registry)
        for key, entry in self.auths.items():
            if normalize_host(key) == wanted and isinstance(entry, Mapping):
                return key, entry
        return None


def parse_docker_config(data: bytes, path: Path) -> DockerConfig:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise AuthError(f"docker config {path} is not valid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise AuthError(f"docker config {path} is not UTF-8 text") from exc
    if not isinstance(doc, dict):
        raise AuthError(f"docker config {path} is not a JSON object")
    auths = doc.get("auths") or {}
    helpers = doc.get("credHelpers") or {}
    store = doc.get("credsStore") or None
    if not isinstance(auths, dict):
        raise AuthError(f"docker config {path}: 'auths' is not an object")
    if not isinstance(helpers, dict) or not all(isinstance(v, str) for v in helpers.values()):
        raise AuthError(f"docker config {path}: 'credHelpers' is not an object of names")
    if store is not None and not isinstance(store, str):
        raise AuthError(f"docker config {path}: 'credsStore' is not a name")
    return DockerConfig(path, auths, store, helpers)


def load_docker_config(path: Path | None = None) -> DockerConfig | None:
    """The config at ``path`` (default: docker's location), or None if there is none."""
    path = path or config_path()
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthError(f"cannot read docker config {path}: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise AuthError(f"docker config {path} is over {MAX_CONFIG_BYTES} bytes")
    return parse_docker_config(data, path)


def credentials_from_entry(key: str, entry: Mapping[str, Any], path: Path) -> Credentials | None:
    """An ``auths`` entry: base64 ``auth`` (user:password), ``identitytoken``, or both."""
    username = _text(entry.get("username"))
    password = _text(entry.get("password"))
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthError(f"docker config {path}: 'auth' of {key!r} is not base64") from exc
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(f"docker config {path}: 'auth' of {key!r} is not user:password")
    token = entry.get("identitytoken")
    identity = token if isinstance(token, str) and token else None
    if identity is None and not (username and password):
        return None
    return Credentials(username or IDENTITY_TOKEN_USER, password, identity)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def run_helper(name: str, server: str) -> Credentials | None:
    """``docker-credential-<name> get`` with ``server`` on stdin; None if it has nothing."""
    program = f"docker-credential-{name}"
    found = shutil.which(program)
    if found is None:
        raise AuthError(f"credential helper {program} named in the docker config is not on PATH")
    try:
        proc = subprocess.run(
            [found, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AuthError(
            f"credential helper {program} did not answer in {HELPER_TIMEOUT:.0f} s"
        ) from exc
    except OSError as exc:
        raise AuthError(f"cannot run credential helper {program}: {exc.strerror}") from exc
    if proc.returncode != 0:
        said = (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()
        if "not found" in said.lower():
            return None
        # Only stderr is repeated: a helper's stdout may carry a secret even when it fails.
        told = proc.stderr.decode("utf-8", "replace").strip()
        first = told.splitlines()[0][:200] if told else f"exit status {proc.returncode}"
        raise AuthError(f"credential helper {program} failed for {server}: {first}")
    try:
        doc = json.loads(proc.stdout)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuthError(f"credential helper {program} printed something other than JSON") from exc
    if not isinstance(doc, dict):
        raise AuthError(f"credential helper {program} printed something other than an object")
    username, secret = doc.get("Username"), doc.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    if username == IDENTITY_TOKEN_USER:
        return Credentials(username, "", identity_token=secret)
    return Credentials(username, secret)


def helper_server_name(registry: str) -> str:
    """What docker passes a helper: Hub's legacy key, otherwise the host."""
    host = normalize_host(registry)
    return DOCKER_HUB_KEY if host == "docker.io" else host


def docker_credentials(registry: str, config: DockerConfig | None = None) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]`` or ``docker.io``) from the docker config."""
    config = config or load_docker_config()
    if config is None:
        return None
    helper = config.helper_for(registry)
    if helper:
        found = run_helper(helper, helper_server_name(registry))
        if found is not None:
            return found
    entry = config.auth_entry(registry)
    if entry is None:
        return None
    key, value = entry
    return credentials_from_entry(key, value, config.path)
