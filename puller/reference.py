"""Parse and normalise image references (``registry/repository[:tag][@digest]``).

Layer: pure (no I/O).

The grammar is that of distribution/reference, which docker uses::

    reference       := name [ ":" tag ] [ "@" digest ]
    name            := [ registry "/" ] repository
    registry        := host [ ":" port ]
    host            := domain-name | IPv4 | "[" IPv6 "]"
    domain-name     := domain-component [ "." domain-component ]*
    domain-component:= /[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]/
    repository      := path-component [ "/" path-component ]*
    path-component  := /[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*/
    tag             := /[\\w][\\w.-]{0,127}/

and docker's normalisation: a first component is a registry only if it contains ``.`` or
``:`` or is ``localhost``; otherwise the registry is Docker Hub, whose single-component
repositories live under ``library/``. The tag defaults to ``latest`` only when neither a
tag nor a digest is given. Every failure is an ``InvalidReference`` that quotes the input.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import NoReturn

from puller.digest import Digest, parse_digest
from puller.errors import InvalidContent, InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io"})
_OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

MAX_REPOSITORY_LENGTH = 255
MAX_REGISTRY_LENGTH = 255
MAX_TAG_LENGTH = 128
# Longest valid reference is registry + repository + tag + sha512 digest (under 800
# characters); anything past this bound is refused before any regex sees it.
MAX_REFERENCE_LENGTH = 1024

# Explicit ASCII classes rather than \w or \d, which match Unicode letters and digits.
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_IPV6_CHARS_RE = re.compile(r"[0-9A-Fa-f:]+")
_PORT_RE = re.compile(r"[0-9]+")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}")
_PRINTABLE_ASCII_RE = re.compile(r"[\x21-\x7e]+")
_WHITESPACE_RE = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. ``tag`` or ``digest`` (or both) is always set.

    Construct with ``parse_reference``; direct construction is checked too, so that
    ``parse_reference(str(r)) == r`` holds for every ``Reference`` that exists.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        problem = _reference_problem(self)
        if problem is not None:
            raise InvalidReference(f"invalid reference {_quote(str(self))}: {problem}")

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """The repository, as it appears in ``/v2/<name>/...``."""
        return self.repository

    @property
    def api_host(self) -> str:
        """The host (and port) to talk to: Docker Hub's API lives on another host."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        """True for ``localhost``, ``127.0.0.0/8`` and ``[::1]``, with or without a port."""
        host = _host_of(self.registry)
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def familiar(self) -> str:
        """The short form docker shows (``alpine:latest``, ``user/repo@sha256:...``).

        The Docker Hub prefix is dropped only where the result parses back to this
        reference: a repository whose first component looks like a host keeps it.
        """
        name = f"{self.registry}/{self.repository}"
        if self.registry == DOCKER_HUB:
            short = self.repository
            if short.startswith(_OFFICIAL_PREFIX) and "/" not in short[len(_OFFICIAL_PREFIX) :]:
                short = short[len(_OFFICIAL_PREFIX) :]
            first, slash, _ = short.partition("/")
            if not (slash and _looks_like_registry(first)):
                name = short
        if self.tag is not None:
            name += f":{self.tag}"
        if self.digest is not None:
            name += f"@{self.digest}"
        return name

    @property
    def manifest_ref(self) -> str:
        """What goes in ``/v2/<name>/manifests/<ref>``: the digest if pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        # __post_init__ guarantees a tag when there is no digest.
        assert self.tag is not None
        return self.tag

    def with_digest(self, digest: Digest) -> Reference:
        """The same reference pinned to ``digest``; the tag, if any, is kept."""
        return dataclasses.replace(self, digest=digest)

    def with_tag(self, tag: str) -> Reference:
        """The same reference with ``tag``; the digest, if any, is kept."""
        problem = _tag_problem(tag)
        if problem is not None:
            raise InvalidReference(f"invalid tag {_quote(tag)}: {problem}")
        return dataclasses.replace(self, tag=tag)


def parse_reference(text: str) -> Reference:
    """Build a normalised Reference from untrusted text; raise InvalidReference otherwise."""
    name, tag, digest = _split(text)
    registry, repository = _split_name(text, name)
    for problem in (
        _registry_problem(registry),
        _repository_problem(repository),
        None if tag is None else _tag_problem(tag),
    ):
        if problem is not None:
            _fail(text, problem)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def _split(text: str) -> tuple[str, str | None, Digest | None]:
    """Check the characters and split ``name[:tag][@digest]``; the digest is parsed here."""
    if not text:
        _fail(text, "it is empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        _fail(text, f"it is longer than {MAX_REFERENCE_LENGTH} characters")
    if _PRINTABLE_ASCII_RE.fullmatch(text) is None:
        if _WHITESPACE_RE.search(text):
            _fail(text, "it contains whitespace")
        _fail(text, "it contains a character that is not printable ASCII")
    if _IMAGE_ID_RE.fullmatch(text):
        # Docker refuses these too: a bare 64-hex string is an image ID, not a name.
        _fail(text, "a 64-character hexadecimal string is an image ID, not a repository name")

    name_tag, at, digest_text = text.partition("@")
    if name_tag.startswith("[") and "/" not in name_tag:
        # Otherwise "[::1]:5000" would be misread as repository "[::1]" with tag "5000".
        _fail(text, "an IPv6 registry must be followed by '/' and a repository name")
    digest: Digest | None = None
    if at:
        if not digest_text:
            _fail(text, "the digest after '@' is missing")
        if "@" in digest_text:
            _fail(text, "it contains more than one '@'")
        try:
            digest = parse_digest(digest_text)
        except InvalidContent as exc:
            raise InvalidReference(f"invalid reference {_quote(text)}: {exc}") from exc

    # A tag is whatever follows a ':' in the last path component; earlier colons
    # belong to the registry's port or to an IPv6 literal.
    tag: str | None = None
    colon = name_tag.rfind(":")
    if colon > name_tag.rfind("/"):
        name_tag, tag = name_tag[:colon], name_tag[colon + 1 :]
        if not tag:
            _fail(text, "the tag after ':' is missing")
    if not name_tag:
        _fail(text, "the repository name is missing")
    return name_tag, tag, digest


def _split_name(text: str, name: str) -> tuple[str, str]:
    """Split ``[registry/]repository`` and apply Docker Hub's normalisation."""
    if name.startswith("/"):
        _fail(text, "the name starts with '/'")
    if name.endswith("/"):
        _fail(text, "the name ends with '/'")
    if "//" in name:
        _fail(text, "the name contains an empty path component ('//')")

    first, slash, rest = name.partition("/")
    if slash and _looks_like_registry(first):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = _OFFICIAL_PREFIX + repository
    return registry, repository


def _looks_like_registry(component: str) -> bool:
    # '[' is included so "[::1]x/y" is reported as a bad host, not a bad path.
    return component == "localhost" or any(c in component for c in ".:[")


def _reference_problem(ref: Reference) -> str | None:
    """Why ``ref`` is not a normalised reference, or None; used on direct construction."""
    for problem in (
        _registry_problem(ref.registry),
        _repository_problem(ref.repository),
        None if ref.tag is None else _tag_problem(ref.tag),
    ):
        if problem is not None:
            return problem
    if not _looks_like_registry(ref.registry):
        return f"registry {_quote(ref.registry)} would be read as a repository path component"
    if ref.registry != DOCKER_HUB and ref.registry in _DOCKER_HUB_ALIASES:
        return f"registry {_quote(ref.registry)} must be written as {DOCKER_HUB!r}"
    if ref.registry == DOCKER_HUB and "/" not in ref.repository:
        return f"Docker Hub repository {_quote(ref.repository)} needs its namespace (library/)"
    if ref.tag is None and ref.digest is None:
        return "it has neither a tag nor a digest"
    return None


def _registry_problem(registry: str) -> str | None:
    if len(registry) > MAX_REGISTRY_LENGTH:
        return f"the registry is longer than {MAX_REGISTRY_LENGTH} characters"
    shown = _quote(registry)
    if registry.startswith("["):
        close = registry.find("]")
        if close < 0:
            return f"registry {shown} has an unclosed '[' in its IPv6 address"
        host, port_part = registry[1:close], registry[close + 1 :]
        if not _is_ipv6(host):
            return f"registry {shown} has an invalid IPv6 address"
        if port_part and not port_part.startswith(":"):
            return f"registry {shown} has text after its IPv6 address that is not a port"
        port = port_part[1:] if port_part else None
    else:
        host, colon, port_text = registry.partition(":")
        port = port_text if colon else None
        if not host:
            return f"registry {shown} has no host name"
        if not all(_DOMAIN_COMPONENT_RE.fullmatch(part) for part in host.split(".")):
            return (
                f"registry host {_quote(host)} is not a valid host name"
                " (letters, digits and '-' in dot-separated parts)"
            )
    if port is not None:
        if not _PORT_RE.fullmatch(port):
            return f"registry {shown} has a port that is not a number"
        if int(port) > 65535:
            return f"registry {shown} has a port above 65535"
    return None


def _is_ipv6(text: str) -> bool:
    # The grammar allows only hex digits and colons (no zone, no embedded IPv4).
    if _IPV6_CHARS_RE.fullmatch(text) is None:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _repository_problem(repository: str) -> str | None:
    if any("A" <= c <= "Z" for c in repository):
        return "repository name must be lowercase"
    if len(repository) > MAX_REPOSITORY_LENGTH:
        return f"repository name is longer than {MAX_REPOSITORY_LENGTH} characters"
    for component in repository.split("/"):
        if not component:
            return "repository name contains an empty path component"
        if _PATH_COMPONENT_RE.fullmatch(component) is None:
            return (
                f"path component {_quote(component)} is invalid"
                " (lowercase letters and digits, separated by '.', '_', '__' or dashes)"
            )
    return None


def _tag_problem(tag: str) -> str | None:
    if len(tag) > MAX_TAG_LENGTH:
        return f"the tag is longer than {MAX_TAG_LENGTH} characters"
    if _TAG_RE.fullmatch(tag) is None:
        return (
            f"tag {_quote(tag)} is invalid (letters, digits, '_', '.' and '-',"
            " not starting with '.' or '-')"
        )
    return None


def _host_of(registry: str) -> str:
    """The host part of a valid registry, without brackets or port."""
    if registry.startswith("["):
        return registry[1 : registry.index("]")]
    return registry.partition(":")[0]


def _quote(text: str) -> str:
    """Double-quoted and escaped, shortened: safe to print whatever the input was."""
    shown = text if len(text) <= 100 else text[:100] + "..."
    return json.dumps(shown)


def _fail(text: str, problem: str) -> NoReturn:
    raise InvalidReference(f"invalid reference {_quote(text)}: {problem}")
