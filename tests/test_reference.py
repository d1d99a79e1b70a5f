"""Tests for puller.reference: the docker reference grammar, normalisation, and errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from puller.digest import Digest
from puller.errors import InvalidReference
from puller.reference import MAX_REFERENCE_LENGTH, Reference, parse_reference

SHA256 = "sha256:" + "a" * 64
SHA512 = "sha512:" + "b" * 128


def _digest(text: str) -> Digest:
    algorithm, _, hex_part = text.partition(":")
    return Digest(algorithm, hex_part)


# input, registry, repository, tag, digest
VALID: list[tuple[str, str, str, str | None, str | None]] = [
    ("alpine", "docker.io", "library/alpine", "latest", None),
    ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
    ("user/repo", "docker.io", "user/repo", "latest", None),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/user/repo:t", "docker.io", "user/repo", "t", None),
    ("docker.io/library/alpine:edge", "docker.io", "library/alpine", "edge", None),
    ("docker.io/library", "docker.io", "library/library", "latest", None),
    ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000", "a/b", "t", None),
    (f"[::1]:5000/x@{SHA256}", "[::1]:5000", "x", None, SHA256),
    ("[::1]/x", "[::1]", "x", "latest", None),
    ("[2001:db8::1]:443/ns/img:v1", "[2001:db8::1]:443", "ns/img", "v1", None),
    ("localhost/x", "localhost", "x", "latest", None),
    ("localhost:5000/x", "localhost:5000", "x", "latest", None),
    # Without a '/', "localhost:5000" is repository "localhost" with tag "5000" (as docker).
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("localhost", "docker.io", "library/localhost", "latest", None),
    ("ghcr.io", "docker.io", "library/ghcr.io", "latest", None),
    (f"a/b/c:tag@{SHA256}", "docker.io", "a/b/c", "tag", SHA256),
    (f"alpine@{SHA512}", "docker.io", "library/alpine", None, SHA512),
    ("ghcr.io/owner/image:v1.2.3", "ghcr.io", "owner/image", "v1.2.3", None),
    ("Registry.Example.COM/x", "Registry.Example.COM", "x", "latest", None),
    ("quay.io/a.b/c_d/e__f/g--h:_", "quay.io", "a.b/c_d/e__f/g--h", "_", None),
    ("r.io:8080/x:UPPER_case.tag-1", "r.io:8080", "x", "UPPER_case.tag-1", None),
    ("my-registry.local:5000/a/b/c/d", "my-registry.local:5000", "a/b/c/d", "latest", None),
    ("x:" + "t" * 128, "docker.io", "library/x", "t" * 128, None),
    ("r.io/" + "a" * 255, "r.io", "a" * 255, "latest", None),
]

# input, a fragment of the expected message
INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    (" ", "whitespace"),
    ("alpine ", "whitespace"),
    ("al\npine", "whitespace"),
    ("alpiné", "not printable ASCII"),
    ("\x00", "not printable ASCII"),
    ("Foo", "repository name must be lowercase"),
    ("Foo/bar", "repository name must be lowercase"),
    ("ghcr.io/Owner/x", "repository name must be lowercase"),
    ("x:", "tag after ':' is missing"),
    ("x:.t", "tag"),
    ("x:-t", "tag"),
    ("x:" + "t" * 129, "longer than 128"),
    ("x:t/y", "port that is not a number"),
    ("x@", "digest after '@' is missing"),
    ("x@sha256:../../etc", "not of the form algorithm:hex"),
    ("x@md5:abcd", "unsupported digest algorithm"),
    ("x@sha256:abcd", "64 lowercase hex"),
    (f"x@{SHA256}@{SHA256}", "more than one '@'"),
    (f"@{SHA256}", "repository name is missing"),
    (":tag", "repository name is missing"),
    ("x/", "ends with '/'"),
    ("ghcr.io/", "ends with '/'"),
    ("/x", "starts with '/'"),
    ("a//b", "empty path component"),
    ("ghcr.io//x", "empty path component"),
    ("a/-b", "path component"),
    ("a_/b", "path component"),
    ("a___b", "path component"),
    ("a/b.", "path component"),
    ("r.io/" + "a" * 256, "longer than 255"),
    ("a" * 248, "longer than 255"),  # "library/" makes it 256
    ("a" * 64, "image ID"),
    ("-r.io/x", "not a valid host name"),
    ("r-.io/x", "not a valid host name"),
    ("r..io/x", "not a valid host name"),
    ("r_x.io/x", "not a valid host name"),
    (":5000/x", "no host name"),
    ("r.io:/x", "port that is not a number"),
    ("r.io:50a/x", "port that is not a number"),
    ("r.io:65536/x", "above 65535"),
    ("[::1", "IPv6"),
    ("[::1]", "IPv6 registry must be followed by '/'"),
    ("[::1]:5000", "IPv6 registry must be followed by '/'"),
    ("[::1/x", "unclosed '['"),
    ("[:::1]/x", "invalid IPv6 address"),
    ("[fe80::1%eth0]/x", "invalid IPv6 address"),
    ("[::ffff:1.2.3.4]/x", "invalid IPv6 address"),
    ("[]/x", "invalid IPv6 address"),
    ("[::1]x/y", "not a port"),
    ("[::1]:x/y", "port that is not a number"),
    ("x" * (MAX_REFERENCE_LENGTH + 1), "longer than 1024"),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), VALID)
def test_valid(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref.registry == registry
    assert ref.repository == repository
    assert ref.name == repository
    assert ref.tag == tag
    assert ref.digest == (None if digest is None else _digest(digest))
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref


@pytest.mark.parametrize(("text", "fragment"), INVALID)
def test_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    message = str(info.value)
    assert fragment in message
    shown = text if len(text) <= 100 else text[:100] + "..."
    assert message.startswith(f"invalid reference {json.dumps(shown)}: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("user/repo:t", "docker.io/user/repo:t"),
        (f"alpine:3@{SHA256}", f"docker.io/library/alpine:3@{SHA256}"),
        (f"localhost:5000/x@{SHA256}", f"localhost:5000/x@{SHA256}"),
    ],
)
def test_str_is_canonical(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("alpine", "alpine:latest"),
        ("docker.io/library/alpine:3", "alpine:3"),
        (f"alpine@{SHA256}", f"alpine@{SHA256}"),
        ("user/repo", "user/repo:latest"),
        ("docker.io/library/a/b", "library/a/b:latest"),
        ("ghcr.io/o/i:t", "ghcr.io/o/i:t"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        # Dropping docker.io here would turn "a.b" into a registry.
        ("docker.io/a.b/c", "docker.io/a.b/c:latest"),
    ],
)
def test_familiar(text: str, familiar: str) -> None:
    assert parse_reference(text).familiar == familiar


@pytest.mark.parametrize(
    ("text", "api_host"),
    [
        ("alpine", "registry-1.docker.io"),
        ("index.docker.io/x/y", "registry-1.docker.io"),
        ("docker.io:443/x", "docker.io:443"),
        ("ghcr.io/x", "ghcr.io"),
        ("[::1]:5000/x", "[::1]:5000"),
    ],
)
def test_api_host(text: str, api_host: str) -> None:
    assert parse_reference(text).api_host == api_host


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        ("localhost/x", True),
        ("localhost:5000/x", True),
        ("127.0.0.1/x", True),
        ("127.1.2.3:5000/x", True),
        ("[::1]/x", True),
        ("[::1]:5000/x", True),
        ("[0:0:0:0:0:0:0:1]:5000/x", True),
        ("alpine", False),
        ("localhost", False),  # docker.io/library/localhost
        ("127.0.0.1.nip.io/x", False),
        ("128.0.0.1/x", False),
        ("[::2]/x", False),
        ("ghcr.io/x", False),
    ],
)
def test_is_loopback(text: str, loopback: bool) -> None:
    assert parse_reference(text).is_loopback is loopback


def test_manifest_ref() -> None:
    assert parse_reference("alpine:3").manifest_ref == "3"
    assert parse_reference(f"alpine:3@{SHA256}").manifest_ref == SHA256
    assert parse_reference(f"alpine@{SHA256}").manifest_ref == SHA256


def test_with_digest_and_with_tag() -> None:
    ref = parse_reference("alpine:3")
    pinned = ref.with_digest(_digest(SHA256))
    assert str(pinned) == f"docker.io/library/alpine:3@{SHA256}"
    assert pinned.manifest_ref == SHA256
    retagged = pinned.with_tag("edge")
    assert retagged.tag == "edge"
    assert retagged.digest == _digest(SHA256)
    assert ref == parse_reference("alpine:3")  # frozen: the original is unchanged
    with pytest.raises(InvalidReference, match='invalid tag "-x"'):
        ref.with_tag("-x")


def test_reference_is_hashable_and_frozen() -> None:
    ref = parse_reference("alpine")
    assert {ref, parse_reference("docker.io/library/alpine:latest")} == {ref}
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("registry", "repository", "tag", "digest"),
    [
        ("docker.io", "alpine", "latest", None),  # would print as a different reference
        ("index.docker.io", "library/alpine", "latest", None),
        ("foo", "bar", "latest", None),  # "foo/bar" would parse as a Docker Hub path
        ("ghcr.io", "x", None, None),  # neither tag nor digest
        ("ghcr.io", "X", "t", None),
        ("ghcr.io", "x", "-t", None),
        ("gh cr.io", "x", "t", None),
    ],
)
def test_direct_construction_is_checked(
    registry: str, repository: str, tag: str | None, digest: Digest | None
) -> None:
    with pytest.raises(InvalidReference):
        Reference(registry, repository, tag, digest)


def test_huge_input_is_refused_quickly() -> None:
    with pytest.raises(InvalidReference, match="longer than 1024") as info:
        parse_reference("a/" * 5_000_000)
    assert len(str(info.value)) < 200


# --- property tests -------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_alnum = st.text(_ALNUM, min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(_alnum)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(_separator), draw(_alnum)]
    return "".join(parts)


_domain_component = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_port = st.integers(0, 65535).map(str)


@st.composite
def registries(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["domain", "localhost", "ipv4", "ipv6", "hub"]))
    if kind == "hub":
        return draw(st.sampled_from(["docker.io", "index.docker.io"]))
    if kind == "localhost":
        host = "localhost"
    elif kind == "ipv4":
        host = str(draw(st.ip_addresses(v=4)))
    elif kind == "ipv6":
        address = draw(st.ip_addresses(v=6)).compressed
        assume(all(c in "0123456789abcdef:" for c in address))
        host = f"[{address}]"
    else:
        host = ".".join(draw(st.lists(_domain_component, min_size=1, max_size=4)))
    if draw(st.booleans()):
        host += ":" + draw(_port)
    # A plain name like "foo" is read as a path component, as docker does.
    assume(host == "localhost" or "." in host or ":" in host)
    return host


_tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digests = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: Digest("sha256", h)),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: Digest("sha512", h)),
)


@given(
    registry=st.none() | registries(),
    components=st.lists(path_components(), min_size=1, max_size=4),
    tag=st.none() | _tags,
    digest=st.none() | _digests,
)
def test_generated_references_parse_and_round_trip(
    registry: str | None, components: list[str], tag: str | None, digest: Digest | None
) -> None:
    repository = "/".join(components)
    if registry is None:
        # Without a registry the first component must not look like one.
        assume(not ("." in components[0] and len(components) > 1))
        text = repository
    else:
        text = f"{registry}/{repository}"
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    assume(text != "a" * 64 and not (len(text) == 64 and set(text) <= set("0123456789abcdef")))

    expected_registry = registry or "docker.io"
    if expected_registry == "index.docker.io":
        expected_registry = "docker.io"
    expected_repository = repository
    if expected_registry == "docker.io" and len(components) == 1:
        expected_repository = "library/" + repository
    assume(len(expected_repository) <= 255)

    ref = parse_reference(text)
    assert ref.registry == expected_registry
    assert ref.repository == expected_repository
    assert ref.tag == (tag if tag is not None or digest is not None else "latest")
    assert ref.digest == digest
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref


def _parse(text: str) -> Reference | InvalidReference:
    try:
        return parse_reference(text)
    except InvalidReference as exc:
        return exc


def _parses_or_refuses(text: str) -> None:
    """Any text gives a Reference or an InvalidReference; a Reference round-trips."""
    ref = _parse(text)
    if isinstance(ref, InvalidReference):
        assert str(ref).startswith("invalid reference ")
        assert "\n" not in str(ref)
        return
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref


@given(st.text())
def test_any_text_parses_or_refuses(text: str) -> None:
    _parses_or_refuses(text)


@given(st.binary().map(lambda b: b.decode("latin-1")))
def test_any_latin1_parses_or_refuses(text: str) -> None:
    _parses_or_refuses(text)


# Text built from the grammar's own punctuation reaches deeper than random Unicode.
@given(st.text("abAZ019.:_-/@[]sha256:ef", max_size=80))
def test_grammar_alphabet_parses_or_refuses(text: str) -> None:
    _parses_or_refuses(text)
