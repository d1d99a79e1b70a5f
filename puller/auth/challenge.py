"""Parse ``WWW-Authenticate`` headers into challenges (RFC 7235, section 4.1).

Layer: pure (no I/O).

The grammar, as registries use it::

    WWW-Authenticate = 1#challenge
    challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param       = token BWS "=" BWS ( token / quoted-string )

Commas separate both the parameters of one challenge and the challenges themselves, so
after a comma ``name=`` continues the current challenge and anything else starts a new
one. Scheme and parameter names are case-insensitive and are lowercased; values are kept
as sent, with quoted-pairs (``\\"``) unescaped. Malformed headers raise ``AuthError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from puller.errors import AuthError

# A registry's challenge is a few hundred bytes; aiohttp already caps header lines at
# 8 KiB. This bound keeps a hostile header from costing more than that.
MAX_HEADER_LENGTH = 16 * 1024

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS_RE = re.compile(r"[ \t]*")
# qdtext and quoted-pair: anything but controls (HTAB is allowed) and DEL; non-ASCII is
# obs-text. The two alternatives cannot overlap, so matching is linear.
_QUOTED_RE = re.compile(r'"((?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_VALUE_CHARS_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


class Params(Mapping[str, str]):
    """A read-only, hashable mapping of auth-param names to values."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._data: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"Params({self._data!r})"


@dataclass(frozen=True, slots=True)
class Challenge:
    """One authentication challenge: a scheme and its parameters (or a token68).

    Construction lowercases the scheme and the parameter names and checks that the
    challenge can be written back as header text; ``str()`` writes it.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=Params)
    token68: str | None = None

    def __post_init__(self) -> None:
        # Normalise on construction so that equality ignores case where RFC 7235 does.
        given = dict(self.params)
        params = Params((name.lower(), value) for name, value in given.items())
        object.__setattr__(self, "scheme", self.scheme.lower())
        object.__setattr__(self, "params", params)
        problem = _challenge_problem(self, duplicate_names=len(params) != len(given))
        if problem is not None:
            raise ValueError(f"invalid challenge: {problem}")

    def __str__(self) -> str:
        if self.token68 is not None:
            return f"{self.scheme} {self.token68}"
        if not self.params:
            return self.scheme
        rendered = ", ".join(f'{name}="{_escape(value)}"' for name, value in self.params.items())
        return f"{self.scheme} {rendered}"

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def error(self) -> str | None:
        """Set when a Bearer token was refused, e.g. ``insufficient_scope`` (RFC 6750)."""
        return self.params.get("error")


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges in one ``WWW-Authenticate`` value, in order; AuthError if malformed.

    A value holding only whitespace and commas (empty list elements) yields no challenges.
    """
    return _Parser(header).parse()


def parse_challenges_from(headers: Iterable[str]) -> list[Challenge]:
    """The challenges of several ``WWW-Authenticate`` header lines, in order."""
    challenges: list[Challenge] = []
    for header in headers:
        challenges.extend(parse_challenges(header))
    return challenges


class _Parser:
    """A single left-to-right scan; ``pos`` never moves backwards."""

    def __init__(self, header: str) -> None:
        self.header = header
        self.pos = 0

    def parse(self) -> list[Challenge]:
        if len(self.header) > MAX_HEADER_LENGTH:
            self._fail(f"it is longer than {MAX_HEADER_LENGTH} characters")
        challenges: list[Challenge] = []
        while True:
            self._skip_separators()
            if self._at_end():
                return challenges
            challenges.append(self._challenge())

    def _challenge(self) -> Challenge:
        start = self.pos
        scheme = self._match(_TOKEN_RE)
        if scheme is None:
            self._fail(f"expected an authentication scheme at character {self.pos + 1}")
        spaces = self._match(_OWS_RE) or ""
        if self._at_end() or self._peek() == ",":
            return Challenge(scheme)
        if not spaces and self._peek() == "=":
            self._fail(f"parameter {scheme!r} at character {start + 1} follows no scheme")
        if not spaces:
            self._fail(f"expected a space after scheme {scheme!r} at character {self.pos + 1}")
        token68 = self._token68()
        if token68 is not None:
            return Challenge(scheme, token68=token68)
        return Challenge(scheme, Params(self._params(scheme)))

    def _token68(self) -> str | None:
        """A token68 if one stands alone here (followed by the end or a comma)."""
        start = self.pos
        value = self._match(_TOKEN68_RE)
        if value is not None:
            self._match(_OWS_RE)
            if self._at_end() or self._peek() == ",":
                return value
        self.pos = start
        return None

    def _params(self, scheme: str) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        seen: set[str] = set()
        while True:
            name = self._match(_TOKEN_RE)
            if name is None:
                self._fail(f"expected a parameter name at character {self.pos + 1}")
            self._match(_OWS_RE)
            if self._peek() != "=":
                self._fail(f"expected '=' after parameter {name!r} at character {self.pos + 1}")
            self.pos += 1
            self._match(_OWS_RE)
            value = self._value(name)
            key = name.lower()
            if key in seen:
                # RFC 7235: each parameter name occurs once; two realms would be ambiguous.
                self._fail(f"parameter {key!r} appears twice in the {scheme!r} challenge")
            seen.add(key)
            params.append((key, value))
            self._match(_OWS_RE)
            if self._at_end():
                return params
            if self._peek() != ",":
                self._fail(f"expected ',' after parameter {name!r} at character {self.pos + 1}")
            self._skip_separators()
            if self._at_end() or not self._next_is_param():
                return params

    def _value(self, name: str) -> str:
        if self._peek() == '"':
            match = _QUOTED_RE.match(self.header, self.pos)
            if match is None:
                self._fail(
                    f"the quoted value of {name!r} at character {self.pos + 1}"
                    " is unterminated or holds a control character"
                )
            self.pos = match.end()
            return _QUOTED_PAIR_RE.sub(r"\1", match.group(1))
        value = self._match(_TOKEN_RE)
        if value is None:
            self._fail(f"parameter {name!r} has no valid value at character {self.pos + 1}")
        return value

    def _next_is_param(self) -> bool:
        """After a comma: ``name =`` continues this challenge; anything else starts one."""
        start = self.pos
        is_param = self._match(_TOKEN_RE) is not None
        if is_param:
            self._match(_OWS_RE)
            is_param = self._peek() == "="
        self.pos = start
        return is_param

    def _skip_separators(self) -> None:
        # Empty list elements (", ,") are allowed by RFC 7230's #rule and are ignored.
        while True:
            self._match(_OWS_RE)
            if self._peek() != ",":
                return
            self.pos += 1

    def _match(self, pattern: re.Pattern[str]) -> str | None:
        match = pattern.match(self.header, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()

    def _peek(self) -> str:
        return self.header[self.pos : self.pos + 1]

    def _at_end(self) -> bool:
        return self.pos >= len(self.header)

    def _fail(self, problem: str) -> NoReturn:
        shown = self.header if len(self.header) <= 100 else self.header[:100] + "..."
        raise AuthError(f"malformed WWW-Authenticate header {json.dumps(shown)}: {problem}")


def _challenge_problem(challenge: Challenge, *, duplicate_names: bool) -> str | None:
    if _TOKEN_RE.fullmatch(challenge.scheme) is None:
        return f"scheme {challenge.scheme!r} is not a token"
    if challenge.token68 is not None:
        if challenge.params:
            return "a challenge has either a token68 or parameters, not both"
        if _TOKEN68_RE.fullmatch(challenge.token68) is None:
            return f"{challenge.token68!r} is not a token68"
    if duplicate_names:
        return "parameter names must differ regardless of case"
    for name, value in challenge.params.items():
        if _TOKEN_RE.fullmatch(name) is None:
            return f"parameter name {name!r} is not a token"
        if _VALUE_CHARS_RE.fullmatch(value) is None:
            return f"the value of {name!r} holds a control character"
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
