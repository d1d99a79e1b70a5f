"""Tests for puller.auth.challenge: WWW-Authenticate parsing (RFC 7235)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from puller.auth.challenge import Challenge, Params, parse_challenges, parse_challenges_from
from puller.errors import AuthError

HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/alpine:pull"'
)

# header, [(scheme, params)]
VALID: list[tuple[str, list[tuple[str, dict[str, str]]]]] = [
    (
        HUB,
        [
            (
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/alpine:pull",
                },
            )
        ],
    ),
    (
        'Bearer realm="x",service="y", Basic realm="z"',
        [("bearer", {"realm": "x", "service": "y"}), ("basic", {"realm": "z"})],
    ),
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    ("BASIC Realm=registry", [("basic", {"realm": "registry"})]),
    ("Bearer realm= x", [("bearer", {"realm": "x"})]),
    ('bEaReR REALM="x"', [("bearer", {"realm": "x"})]),
    ('Bearer realm="a,b,c"', [("bearer", {"realm": "a,b,c"})]),
    (r'Bearer realm="say \"hi\""', [("bearer", {"realm": 'say "hi"'})]),
    (r'Bearer realm="back\\slash"', [("bearer", {"realm": "back\\slash"})]),
    (r'Bearer realm="\q"', [("bearer", {"realm": "q"})]),
    ('Bearer realm=""', [("bearer", {"realm": ""})]),
    (
        'Bearer realm="x",error="insufficient_scope",scope="repository:a/b:pull,push"',
        [
            (
                "bearer",
                {"realm": "x", "error": "insufficient_scope", "scope": "repository:a/b:pull,push"},
            )
        ],
    ),
    (
        'Bearer error=invalid_token, error_description="The token expired"',
        [("bearer", {"error": "invalid_token", "error_description": "The token expired"})],
    ),
    (
        '  Bearer   realm = "x" ,\tservice\t=\ty  ,  Basic  realm="z"  ',
        [("bearer", {"realm": "x", "service": "y"}), ("basic", {"realm": "z"})],
    ),
    ('Bearer realm="x",, ,service="y",', [("bearer", {"realm": "x", "service": "y"})]),
    (', Basic realm="x"', [("basic", {"realm": "x"})]),
    ("Negotiate", [("negotiate", {})]),
    ('Negotiate, Basic realm="x"', [("negotiate", {}), ("basic", {"realm": "x"})]),
    ('Basic realm="x", Negotiate', [("basic", {"realm": "x"}), ("negotiate", {})]),
    # After a comma, a name without "=" starts a new challenge.
    ('Bearer realm="x", service', [("bearer", {"realm": "x"}), ("service", {})]),
    ('Bearer realm="caf\u00e9"', [("bearer", {"realm": "caf\u00e9"})]),
    ('Bearer realm="tab\there"', [("bearer", {"realm": "tab\there"})]),
    ("", []),
    ("   ", []),
    (" , ,", []),
]

INVALID: list[tuple[str, str]] = [
    ("=x", "expected an authentication scheme"),
    ('"Bearer"', "expected an authentication scheme"),
    # "realm=" alone is a token68 (RFC 7235), so "service=y" starts a challenge of its own.
    ("Bearer realm=,service=y", "follows no scheme"),
    ("Bearer realm= ,service=y", "follows no scheme"),
    ('Bearer realm="x', "unterminated"),
    ('Bearer realm="x\\"', "unterminated"),
    ('Bearer realm="x\ny"', "control character"),
    ('Bearer realm="x" service="y"', "expected ','"),
    ("Bearer realm=https://x", "expected ','"),
    ('Bearer realm="x",service="y",realm="z"', "appears twice"),
    ('Bearer realm="x",REALM="z"', "appears twice"),
    ('Basic, realm="x"', "follows no scheme"),
    ('Bearer realm="x", =y', "expected an authentication scheme"),
    ("Bearer abc def", "expected '='"),
    ('Bearer realm="x";', "expected ','"),
    ("Bearer\nrealm=x", "expected"),
    ("Basic realm=\u00e9", "has no valid value"),
    ("x" * 20_000, "longer than"),
]


def _simple(challenges: list[Challenge]) -> list[tuple[str, dict[str, str]]]:
    return [(c.scheme, dict(c.params)) for c in challenges]


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_valid(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    challenges = parse_challenges(header)
    assert _simple(challenges) == expected
    assert all(c.token68 is None for c in challenges)


@pytest.mark.parametrize(("header", "fragment"), INVALID)
def test_invalid(header: str, fragment: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_challenges(header)
    message = str(info.value)
    assert fragment in message
    shown = header if len(header) <= 100 else header[:100] + "..."
    assert message.startswith(f"malformed WWW-Authenticate header {json.dumps(shown)}: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Negotiate abc==", [Challenge("negotiate", token68="abc==")]),
        ("Basic realm", [Challenge("basic", token68="realm")]),
        ("Bearer realm=", [Challenge("bearer", token68="realm=")]),
        ("Foo a/b+c~d.e_f-g=", [Challenge("foo", token68="a/b+c~d.e_f-g=")]),
        (
            'Foo abc= , Basic realm="x"',
            [Challenge("foo", token68="abc="), Challenge("basic", {"realm": "x"})],
        ),
    ],
)
def test_token68(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_properties() -> None:
    (challenge,) = parse_challenges(
        'Bearer realm="https://a/token",service="reg",scope="repository:x:pull",'
        'error="insufficient_scope"'
    )
    assert challenge.realm == "https://a/token"
    assert challenge.service == "reg"
    assert challenge.scope == "repository:x:pull"
    assert challenge.error == "insufficient_scope"
    (bare,) = parse_challenges("Basic")
    assert (bare.realm, bare.service, bare.scope, bare.error) == (None, None, None, None)


def test_parse_challenges_from_combines_lines_in_order() -> None:
    challenges = parse_challenges_from(['Bearer realm="x"', "", 'Basic realm="y", Negotiate'])
    assert [c.scheme for c in challenges] == ["bearer", "basic", "negotiate"]
    assert parse_challenges_from([]) == []
    with pytest.raises(AuthError):
        parse_challenges_from(['Basic realm="y"', 'Bearer realm="'])


def test_challenge_is_hashable_and_normalised() -> None:
    a = Challenge("Bearer", {"Realm": "x", "service": "y"})
    b = Challenge("bearer", Params([("service", "y"), ("realm", "x")]))
    assert a == b
    assert hash(a) == hash(b)
    assert {a, b} == {a}
    assert isinstance(a.params, Params)
    assert a.params["realm"] == "x"
    with pytest.raises(TypeError):
        a.params["realm"] = "z"  # type: ignore[index]


@pytest.mark.parametrize(
    ("scheme", "params", "token68"),
    [
        ("Bear er", {}, None),
        ("", {}, None),
        ("bearer", {"re alm": "x"}, None),
        ("bearer", {"realm": "x\ny"}, None),
        ("bearer", {"realm": "x", "REALM": "y"}, None),
        ("negotiate", {"realm": "x"}, "abc"),
        ("negotiate", {}, "a b"),
    ],
)
def test_challenge_construction_is_checked(
    scheme: str, params: dict[str, str], token68: str | None
) -> None:
    with pytest.raises(ValueError, match="invalid challenge"):
        Challenge(scheme, params, token68)


def test_str_renders_header_text() -> None:
    challenge = Challenge("Bearer", {"realm": 'a "b" \\ c', "service": "s"})
    assert str(challenge) == r'bearer realm="a \"b\" \\ c", service="s"'
    assert str(Challenge("Negotiate")) == "negotiate"
    assert str(Challenge("Negotiate", token68="abc=")) == "negotiate abc="


# --- property tests -------------------------------------------------------------------


def _parse(header: str) -> list[Challenge] | AuthError:
    try:
        return parse_challenges(header)
    except AuthError as exc:
        return exc


def _parses_or_refuses(header: str) -> None:
    challenges = _parse(header)
    if isinstance(challenges, AuthError):
        assert str(challenges).startswith("malformed WWW-Authenticate header ")
        assert "\n" not in str(challenges)
        return
    # Whatever parsed renders back to text that parses to the same challenges.
    assert parse_challenges(", ".join(str(c) for c in challenges)) == challenges


@given(st.text())
def test_any_text_parses_or_refuses(header: str) -> None:
    _parses_or_refuses(header)


@given(st.binary().map(lambda b: b.decode("latin-1")))
def test_any_latin1_parses_or_refuses(header: str) -> None:
    _parses_or_refuses(header)


# The grammar's own punctuation finds the edge cases random Unicode rarely reaches.
@given(st.text('Bearic rlm="x\\, =\t/+a', max_size=60))
def test_grammar_alphabet_parses_or_refuses(header: str) -> None:
    _parses_or_refuses(header)


_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_tokens = st.text(_TCHARS, min_size=1, max_size=10)
_names = st.text(_TCHARS.lower(), min_size=1, max_size=10)
_values = st.text(
    st.characters(exclude_categories=["Cs", "Cc"]) | st.sampled_from('\t"\\,= '), max_size=20
)
_token68s = st.from_regex(r"[A-Za-z0-9\-._~+/]{1,10}={0,2}", fullmatch=True)
_ows = st.sampled_from(["", " ", "\t", "  \t "])


@st.composite
def challenges(draw: st.DrawFn) -> Challenge:
    scheme = draw(_tokens)
    if draw(st.booleans()):
        return Challenge(scheme, token68=draw(_token68s))
    return Challenge(scheme, draw(st.dictionaries(_names, _values, max_size=4)))


@st.composite
def rendered(draw: st.DrawFn, challenge: Challenge) -> str:
    """Header text for ``challenge`` with random case, spacing and quoting."""

    def any_case(text: str) -> str:
        return "".join(c.upper() if draw(st.booleans()) else c for c in text)

    text = any_case(challenge.scheme)
    if challenge.token68 is not None:
        return f"{text}{draw(st.sampled_from([' ', '  ', chr(9)]))}{challenge.token68}"
    params = []
    for name, value in challenge.params.items():
        if value and all(c in _TCHARS for c in value) and draw(st.booleans()):
            shown = value
        else:
            shown = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        params.append(f"{any_case(name)}{draw(_ows)}={draw(_ows)}{shown}")
    if params:
        text += draw(st.sampled_from([" ", "  ", "\t"])) + ",".join(
            f"{draw(_ows)}{p}{draw(_ows)}" for p in params
        )
    return text


@given(st.data(), st.lists(challenges(), max_size=4))
def test_generated_challenges_round_trip(data: st.DataObject, expected: list[Challenge]) -> None:
    canonical = ", ".join(str(c) for c in expected)
    assert parse_challenges(canonical) == expected
    separators = st.sampled_from([",", ", ", " ,", " , ,  ", ",\t"])
    varied = ""
    for i, challenge in enumerate(expected):
        varied += (data.draw(separators) if i else "") + data.draw(rendered(challenge))
    assert parse_challenges(varied) == expected
    lines = [str(c) for c in expected]
    assert parse_challenges_from(lines) == expected
