"""pytest fixtures that run real registries; load with ``pytest_plugins = ["tests.kit.fixtures"]``.

Layer: test kit (processes, files, loopback network). A missing binary fails the test with
the name of the ``make`` target that installs it; nothing here skips.

- ``registry``: a fresh registry per test (storage under ``tmp_path``), for tests that
  push, corrupt or restart.
- ``shared_registry``: one registry for the whole session, for read-only tests; push under
  a repository name of your own.
- ``shared_standard_image``: ``standard_image(0)`` pushed once to the shared registry.
- ``basic_auth_registry``: htpasswd auth, user ``tester`` with a generated password.
- ``proxy``: a ``FaultProxy`` in front of the shared registry (faults added per test).
- ``registry_factory``: start more registries in one test (a pull-through cache in front
  of an upstream, say); all are stopped at teardown.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kit.faultproxy import FaultProxy
from tests.kit.images import BuiltImage, push_image, standard_image
from tests.kit.registry import (
    BasicAuthRegistry,
    RegistryConfig,
    RunningRegistry,
    start_basic_auth_registry,
    start_registry,
)

RegistryFactory = Callable[..., RunningRegistry]


@dataclass(frozen=True, slots=True)
class PushedImage:
    """An image as pushed: where it lives and what it is."""

    registry: RunningRegistry
    repo: str
    tag: str
    image: BuiltImage

    @property
    def digest(self) -> str:
        return self.image.manifest_digest

    @property
    def reference(self) -> str:
        """``127.0.0.1:PORT/repo:tag``."""
        return f"{self.registry.host}/{self.repo}:{self.tag}"

    @property
    def digest_reference(self) -> str:
        """``127.0.0.1:PORT/repo@sha256:...``."""
        return f"{self.registry.host}/{self.repo}@{self.digest}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A fresh registry with its own storage; stopped after the test."""
    with start_registry(RegistryConfig(root=tmp_path / "registry")) as running:
        yield running


@pytest.fixture(scope="session")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """One registry for the session: read-only tests only (never corrupt or restart it)."""
    root = tmp_path_factory.mktemp("shared-registry")
    with start_registry(RegistryConfig(root=root)) as running:
        yield running


@pytest.fixture(scope="session")
def shared_standard_image(shared_registry: RunningRegistry) -> PushedImage:
    """``standard_image(0)`` (Docker schema2) pushed to the shared registry as std/image:v1."""
    image = standard_image(0)
    push_image(shared_registry.url, "std/image", "v1", image)
    return PushedImage(shared_registry, "std/image", "v1", image)


@pytest.fixture
def proxy(shared_registry: RunningRegistry) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the shared registry; no faults until added."""
    with FaultProxy(shared_registry.url) as running:
        yield running


@pytest.fixture
def basic_auth_registry(tmp_path: Path) -> Iterator[BasicAuthRegistry]:
    """A registry behind Basic auth: ``.username`` is ``tester``, ``.password`` generated."""
    running = start_basic_auth_registry(tmp_path / "basic-auth-registry")
    try:
        yield running
    finally:
        running.registry.stop()


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    """``registry_factory(**RegistryConfig fields)`` starts another registry for this test."""
    started: list[RunningRegistry] = []
    counter = itertools.count()

    def make(**fields: Any) -> RunningRegistry:
        root = fields.pop("root", None) or tmp_path / f"registry-{next(counter)}"
        running = start_registry(RegistryConfig(root=root, **fields))
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in reversed(started):
            running.stop()


@pytest.fixture
def kit_workdir(tmp_path: Path) -> Path:
    """An empty directory for producers (umoci layouts, skopeo digest files)."""
    path = tmp_path / "kit-work"
    path.mkdir()
    return path
