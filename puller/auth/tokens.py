"""Answering a registry's 401 challenge: Basic credentials or a Bearer token from its realm.

Layer: I/O (fetches tokens). Tokens are cached per (realm, service, scope) and never
appear in reprs, errors or logs.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from puller.auth.challenge import Challenge
from puller.errors import AuthError, PullVerifyError
from puller.transport import MAX_ERROR_BODY, translate

MAX_TOKEN_RESPONSE = 1 << 20
DEFAULT_TOKEN_LIFETIME = 60.0
# Refresh a little early so a token does not expire between our check and the request.
EXPIRY_MARGIN = 10.0


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float


class Authenticator:
    """Holds what is needed to answer challenges for one registry host."""

    def __init__(
        self,
        host: str,
        credentials: Credentials | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._challenge: Challenge | None = None

    def __repr__(self) -> str:
        user = self.credentials.username if self.credentials else None
        return f"Authenticator(host={self.host!r}, username={user!r})"

    def header_for(self, scope: str) -> str | None:
        """The Authorization value to send before any challenge, from what is cached."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        token = self._tokens.get((challenge.realm or "", challenge.service or "", scope))
        if token is None or token.expires_at <= self._clock():
            return None
        return f"Bearer {token.value}"

    def forget(self, scope: str) -> None:
        challenge = self._challenge
        if challenge is not None:
            self._tokens.pop((challenge.realm or "", challenge.service or "", scope), None)

    async def answer(
        self, session: aiohttp.ClientSession, challenges: list[Challenge], scope: str
    ) -> str:
        """The Authorization value that answers a 401, fetching a token when asked to."""
        by_scheme = {c.scheme: c for c in challenges}
        bearer = by_scheme.get("bearer")
        basic = by_scheme.get("basic")
        if bearer is not None and bearer.realm:
            self._challenge = bearer
            scopes = [scope]
            if bearer.scope and bearer.scope not in scopes:
                scopes.append(bearer.scope)
            return f"Bearer {await self._fetch_token(session, bearer, scope, scopes)}"
        if basic is not None:
            self._challenge = basic
            if self.credentials is None:
                raise AuthError(
                    f"{self.host} requires a username and password "
                    "(use --username and --password-stdin)",
                    status=401,
                )
            return self.credentials.basic_header()
        offered = ", ".join(sorted(by_scheme)) or "none"
        raise AuthError(
            f"{self.host} asks for an authentication scheme we cannot answer ({offered})",
            status=401,
        )

    async def _fetch_token(
        self,
        session: aiohttp.ClientSession,
        challenge: Challenge,
        scope: str,
        scopes: list[str],
    ) -> str:
        realm = challenge.realm or ""
        service = challenge.service or ""
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
        what = f"token request to {realm}"
        try:
            async with session.get(
                realm, params=params, headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.content.read(MAX_TOKEN_RESPONSE + 1)
                status = resp.status
        except PullVerifyError:
            raise
        except Exception as exc:
            raise translate(exc, what) from exc
        if status in (401, 403):
            raise AuthError(
                f"{what} was refused (HTTP {status}): "
                + ("wrong username or password" if self.credentials else "credentials needed"),
                status=status,
            )
        if status != 200:
            text = body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip().splitlines()
            raise AuthError(
                f"{what} failed with HTTP {status}: {text[0] if text else ''}",
                status=status,
                retryable=status >= 500 or status == 429,
            )
        if len(body) > MAX_TOKEN_RESPONSE:
            raise AuthError(f"{what}: response is over {MAX_TOKEN_RESPONSE} bytes")
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AuthError(f"{what}: response is not JSON") from exc
        if not isinstance(doc, dict):
            raise AuthError(f"{what}: response is not a JSON object")
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"{what}: response carries no token")
        lifetime = doc.get("expires_in")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        expires_at = self._clock() + max(1.0, float(lifetime) - EXPIRY_MARGIN)
        self._tokens[(realm, service, scope)] = _Token(value, expires_at)
        return value
