"""Answering a registry's 401 challenge: Basic credentials or a Bearer token from its realm.

Layer: I/O (fetches tokens). The Docker token protocol, as registries speak it:

- ``GET realm?service=...&scope=...`` (every scope needed, Basic credentials when known),
  answered by ``{"token"|"access_token", "expires_in", "issued_at"}``;
- OAuth2 ``POST realm`` with ``grant_type=refresh_token`` when an identity token is known
  (``docker login`` stores one for some registries), or ``grant_type=password`` for a token
  server that does not answer the GET form (404/405).

Tokens are cached per (realm, service, scope), fetched again shortly before they expire, and
fetched again once when the registry refuses one (a 401 in the middle of a long pull). One
lock per cache key keeps concurrent layer downloads from fetching the same token four times.
Tokens and passwords never appear in reprs, errors or logs.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

import aiohttp
import anyio

from puller.auth.challenge import Challenge
from puller.errors import AuthError, PullVerifyError
from puller.transport import MAX_ERROR_BODY, redact_url, translate

MAX_TOKEN_RESPONSE = 1 << 20
DEFAULT_TOKEN_LIFETIME = 60.0  # the spec's default when expires_in is absent
# Refresh a little early so a token does not expire between our check and the request;
# for short-lived tokens, at half their life.
EXPIRY_MARGIN = 10.0
CLIENT_ID = "pull-verify"
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")

CredentialLookup = Callable[[], "Credentials | None"]
TokenKey = tuple[str, str, str]  # (realm, service, scope)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password, or an identity token (an OAuth2 refresh token)."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float  # on the monotonic clock

    @property
    def header(self) -> str:
        return f"Bearer {self.value}"


def parse_issued_at(text: object) -> float | None:
    """RFC 3339 ``issued_at`` as a POSIX time; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    # Go servers send nanoseconds; datetime takes at most microseconds.
    cleaned = _FRACTION_RE.sub(r"\1", text.strip()).replace("z", "Z")
    try:
        when = dt.datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def token_lifetime(expires_in: object, issued_at: object, now: float) -> float:
    """Seconds the token stays usable from ``now`` (wall clock), before our margin.

    ``issued_at`` shortens the lifetime by the token's age. A clock so skewed that the age
    is negative or past the whole lifetime is ignored rather than trusted: it would make
    every token look expired and have us fetch one per request.
    """
    lifetime = DEFAULT_TOKEN_LIFETIME
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = float(expires_in)
    issued = parse_issued_at(issued_at)
    if issued is not None and 0 <= now - issued < lifetime:
        lifetime -= now - issued
    return lifetime


def usable_for(lifetime: float) -> float:
    """How long we use a token of ``lifetime`` seconds before fetching a fresh one."""
    return max(0.0, lifetime - min(EXPIRY_MARGIN, lifetime / 2))


class Authenticator:
    """Holds what is needed to answer challenges for one registry host."""

    def __init__(
        self,
        host: str,
        credentials: Credentials | None = None,
        *,
        lookup: CredentialLookup | None = None,
        plain_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.credentials = credentials
        # True when the registry itself may be spoken to without TLS (loopback, --insecure):
        # only then may credentials go to a token realm over plain HTTP on another host.
        self.plain_http = plain_http
        self._lookup = lookup if credentials is None else None
        self._clock = clock
        self._wall_clock = wall_clock
        self._tokens: dict[TokenKey, _Token] = {}
        self._locks: dict[TokenKey, anyio.Lock] = {}
        self._lookup_lock = anyio.Lock()
        self._challenge: Challenge | None = None
        self._refresh_token: str | None = credentials.identity_token if credentials else None
        self.token_requests = 0  # how many times a realm was asked; for --debug and tests

    def __repr__(self) -> str:
        user = self.credentials.username if self.credentials else None
        return f"Authenticator(host={self.host!r}, username={user!r})"

    # -- what to send ---------------------------------------------------------------------

    def header_for(self, scope: str) -> str | None:
        """The Authorization value to send before any challenge, from what is cached."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        token = self._tokens.get(_key(challenge, scope))
        if token is None or token.expires_at <= self._clock():
            return None
        return token.header

    async def authorization(self, session: aiohttp.ClientSession, scope: str) -> str | None:
        """The Authorization value for a request, fetching a fresh token before expiry.

        Before the first challenge nothing is sent: the registry's 401 says what it wants.
        """
        cached = self.header_for(scope)
        challenge = self._challenge
        if cached is not None or challenge is None or challenge.scheme != "bearer":
            return cached
        key = _key(challenge, scope)
        async with self._lock(key):
            token = self._tokens.get(key)
            if token is None or token.expires_at <= self._clock():
                token = await self._fetch_token(session, challenge, scope, _scopes(scope, ()))
            return token.header

    def forget(self, scope: str) -> None:
        challenge = self._challenge
        if challenge is not None:
            self._tokens.pop(_key(challenge, scope), None)

    # -- answering a 401 ------------------------------------------------------------------

    async def answer(
        self,
        session: aiohttp.ClientSession,
        challenges: list[Challenge],
        scope: str,
        *,
        refused: str | None = None,
    ) -> str:
        """The Authorization value that answers a 401, fetching a token when asked to.

        ``refused`` is the value the registry just turned down: a cached token equal to it
        is fetched again; one that differs was already refreshed by a concurrent request.
        """
        by_scheme = {c.scheme: c for c in challenges}
        bearer = by_scheme.get("bearer")
        basic = by_scheme.get("basic")
        if bearer is not None and bearer.realm:
            self._challenge = bearer
            key = _key(bearer, scope)
            async with self._lock(key):
                token = self._tokens.get(key)
                fresh = token is not None and token.expires_at > self._clock()
                if token is not None and fresh and token.header != refused:
                    return token.header
                scopes = _scopes(scope, (bearer.scope or "").split())
                return (await self._fetch_token(session, bearer, scope, scopes)).header
        if basic is not None:
            self._challenge = basic
            credentials = await self._credentials()
            if credentials is None or credentials.identity_token is not None:
                raise AuthError(
                    f"{self.host} requires a username and password "
                    "(use --username and --password-stdin, or docker login)",
                    status=401,
                )
            return credentials.basic_header()
        offered = ", ".join(sorted(by_scheme)) or "none"
        raise AuthError(
            f"{self.host} asks for an authentication scheme we cannot answer ({offered})",
            status=401,
        )

    def refused(self, what: str, challenges: list[Challenge], scope: str) -> AuthError:
        """One sentence for a 401 that came back after the challenge was answered."""
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None and bearer.error == "insufficient_scope":
            wanted = bearer.scope or scope
            reason = f"the token from {self._realm_name()} does not grant {wanted}"
            if self.credentials is None:
                reason += " to anonymous users (log in with --username or docker login)"
            return AuthError(f"{what}: access denied (HTTP 401): {reason}", status=401)
        if bearer is not None:
            error = f" ({bearer.error})" if bearer.error else ""
            return AuthError(
                f"{what}: access denied (HTTP 401): the registry refused the token from "
                f"{self._realm_name()}{error}",
                status=401,
            )
        who = f" for {self.credentials.username!r}" if self.credentials else ""
        return AuthError(
            f"{what}: access denied (HTTP 401): the registry refused the username and "
            f"password{who}",
            status=401,
        )

    # -- internals ------------------------------------------------------------------------

    def _realm_name(self) -> str:
        realm = self._challenge.realm if self._challenge else None
        return redact_url(realm) if realm else self.host

    def _lock(self, key: TokenKey) -> anyio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        return lock

    async def _credentials(self) -> Credentials | None:
        """The credentials given, or those the docker config names, looked up once."""
        async with self._lookup_lock:
            lookup, self._lookup = self._lookup, None
            if lookup is not None:
                # Reading files and running a credential helper: keep it off the loop.
                self.credentials = await anyio.to_thread.run_sync(lookup)
                if self.credentials is not None:
                    self._refresh_token = self.credentials.identity_token
        return self.credentials

    async def _fetch_token(
        self,
        session: aiohttp.ClientSession,
        challenge: Challenge,
        scope: str,
        scopes: list[str],
    ) -> _Token:
        realm = challenge.realm or ""
        service = challenge.service or ""
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthError(f"{self.host}: token realm {redact_url(realm)!r} is not an HTTP URL")
        credentials = await self._credentials()
        shown = redact_url(realm)
        what = f"{self.host}: token request to {shown}"
        secret = credentials is not None or self._refresh_token is not None
        if secret and parts.scheme == "http" and not (self.plain_http or _is_loopback(parts)):
            raise AuthError(
                f"{what}: refusing to send credentials over plain HTTP (the realm is not "
                f"HTTPS; name {self.host} with --insecure if that is really meant)",
                status=401,
            )
        if self._refresh_token is not None:
            form = {"grant_type": "refresh_token", "refresh_token": self._refresh_token}
            status, body = await self._post(session, realm, service, scopes, form, what)
            if status in (401, 403):
                raise AuthError(
                    f"{what} was refused (HTTP {status}): the identity token from the docker "
                    "config is not valid (docker login again)",
                    status=status,
                )
        else:
            status, body = await self._get(session, realm, service, scopes, credentials, what)
            if status in (404, 405) and credentials is not None:
                # A token server that only speaks OAuth2: the password grant.
                form = {
                    "grant_type": "password",
                    "username": credentials.username,
                    "password": credentials.password,
                }
                status, body = await self._post(session, realm, service, scopes, form, what)
            if status in (401, 403):
                reason = (
                    f"wrong username or password for {credentials.username!r}"
                    if credentials is not None
                    else "it wants credentials (use --username and --password-stdin, "
                    "or docker login)"
                )
                raise AuthError(f"{what} was refused (HTTP {status}): {reason}", status=status)
        if status != 200:
            text = body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip().splitlines()
            first = text[0][:200] if text else ""
            raise AuthError(
                f"{what} failed with HTTP {status}" + (f": {first}" if first else ""),
                status=status,
                retryable=status >= 500 or status == 429,
            )
        token = self._parse_token_response(body, what)
        self._tokens[(realm, service, scope)] = token
        return token

    def _parse_token_response(self, body: bytes, what: str) -> _Token:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AuthError(f"{what}: the response is not JSON") from exc
        if not isinstance(doc, dict):
            raise AuthError(f"{what}: the response is not a JSON object")
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"{what}: the response carries no token")
        refresh = doc.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            # OAuth2 servers may rotate the refresh token; the next fetch uses the new one.
            self._refresh_token = refresh
        lifetime = token_lifetime(doc.get("expires_in"), doc.get("issued_at"), self._wall_clock())
        return _Token(value, self._clock() + usable_for(lifetime))

    async def _get(
        self,
        session: aiohttp.ClientSession,
        realm: str,
        service: str,
        scopes: list[str],
        credentials: Credentials | None,
        what: str,
    ) -> tuple[int, bytes]:
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        if credentials is not None:
            params.append(("account", credentials.username))
        headers = {"Authorization": credentials.basic_header()} if credentials else {}
        return await self._send(session, "GET", realm, what, params=params, headers=headers)

    async def _post(
        self,
        session: aiohttp.ClientSession,
        realm: str,
        service: str,
        scopes: list[str],
        form: dict[str, str],
        what: str,
    ) -> tuple[int, bytes]:
        data = {**form, "client_id": CLIENT_ID}
        if service:
            data["service"] = service
        if scopes:
            data["scope"] = " ".join(scopes)
        return await self._send(session, "POST", realm, what, data=data)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        what: str,
        *,
        params: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        self.token_requests += 1
        try:
            async with session.request(
                method, url, params=params, headers=headers, data=data, allow_redirects=False
            ) as resp:
                return resp.status, await _read_bounded(resp, what)
        except PullVerifyError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc


async def _read_bounded(resp: aiohttp.ClientResponse, what: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while chunk := await resp.content.read(MAX_TOKEN_RESPONSE + 1 - total):
        parts.append(chunk)
        total += len(chunk)
        if total > MAX_TOKEN_RESPONSE:
            raise AuthError(f"{what}: the response is over {MAX_TOKEN_RESPONSE} bytes")
    return b"".join(parts)


def _key(challenge: Challenge, scope: str) -> TokenKey:
    return (challenge.realm or "", challenge.service or "", scope)


def _scopes(scope: str, extra: Iterable[str]) -> list[str]:
    wanted = [scope] if scope else []
    wanted.extend(s for s in extra if s and s not in wanted)
    return wanted


def _is_loopback(parts: SplitResult) -> bool:
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
