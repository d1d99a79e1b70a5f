"""A Docker token server (the registry's ``realm``) for tests: aiohttp in a background thread.

Layer: test kit, network I/O on loopback only. It mints JWTs with ``TokenIssuer``, whose
certificate the real registry trusts (``auth.token.rootcertbundle``), and it enforces scope
the way real token servers do: a request for a repository the principal may not pull gets a
token whose ``access`` claim leaves it out, and the registry then refuses that token.

Served, all on ``/token``:

- ``GET ?service=&scope=...`` with optional HTTP Basic credentials (the Docker protocol);
- ``POST`` form ``grant_type=password`` (username, password) or ``grant_type=refresh_token``
  (an identity token), OAuth2 style, answering ``access_token`` and ``refresh_token``.

Every request is logged in ``requests`` (never with secrets), so tests can prove that a
client fetched a token again instead of waiting for one to expire.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import socket
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Self

from aiohttp import web

from tests.kit.serving import LoopThread, Stoppable
from tests.kit.tokens import Access, TokenIssuer

ANONYMOUS = ""  # the principal of a request without credentials


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request as the server saw it (no secrets)."""

    method: str
    grant_type: str | None  # None for the GET form
    principal: str | None  # the user authenticated, ANONYMOUS, or None if refused
    scopes: tuple[str, ...]
    granted: tuple[str, ...]  # repository names whose pull was granted
    status: int
    had_authorization: bool


@dataclass
class TokenServer(Stoppable):
    """Configure, then ``start()`` (or use as a context manager); ``realm`` is the URL."""

    issuer: TokenIssuer
    users: Mapping[str, str] = field(default_factory=dict)  # username -> password
    identity_tokens: Mapping[str, str] = field(default_factory=dict)  # token -> username
    # principal -> repositories it may pull ("*" for any); ANONYMOUS for no credentials.
    grants: Mapping[str, Collection[str]] = field(default_factory=dict)
    expires_in: int = 300
    # The next N tokens are minted already expired (beyond the registry's leeway) while the
    # response still claims ``expires_in``: the registry refuses them mid-pull.
    expired_next: int = 0
    accept_get: bool = True  # False: GET answers 405, as OAuth2-only servers do
    requests: list[TokenRequest] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _server: LoopThread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_route("*", "/token", self._handle)
        runner = web.AppRunner(app, access_log=None)

        async def serve() -> None:
            await runner.setup()
            await web.SockSite(runner, sock).start()

        self._server = LoopThread("token-server", serve, runner.cleanup)
        self._server.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def count(self, *, method: str | None = None, grant_type: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method)
                and (grant_type is None or r.grant_type == grant_type)
            )

    # -- the endpoint ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        had_auth = "Authorization" in request.headers
        if request.method == "GET":
            if not self.accept_get:
                return self._log(request, None, None, (), 405, had_auth, web.Response(status=405))
            scopes = tuple(request.query.getall("scope", []))
            principal = self._basic_principal(request.headers.get("Authorization"))
            grant_type = None
        elif request.method == "POST":
            form = await request.post()
            grant_type = str(form.get("grant_type", ""))
            scopes = tuple(str(form.get("scope", "")).split())
            if grant_type == "password":
                user, password = str(form.get("username", "")), str(form.get("password", ""))
                principal = user if user and self.users.get(user) == password else None
            elif grant_type == "refresh_token":
                principal = self.identity_tokens.get(str(form.get("refresh_token", "")))
            else:
                return self._log(request, grant_type, None, scopes, 400, had_auth, _bad())
        else:
            return web.Response(status=405)
        if principal is None:
            return self._log(
                request, grant_type, None, scopes, 401, had_auth, web.Response(status=401)
            )
        granted = self._granted(principal, scopes)
        now = time.time()
        with self._lock:
            expired = self.expired_next > 0
            if expired:
                self.expired_next -= 1
        access = [Access(name) for name in granted]
        if expired:
            token = self.issuer.mint(
                access, ttl=60, subject=principal or "anonymous", now=now - 3600
            )
        else:
            token = self.issuer.mint(access, ttl=self.expires_in, subject=principal or "anonymous")
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
        body: dict[str, object] = {"expires_in": self.expires_in, "issued_at": issued_at}
        if request.method == "POST":
            body["access_token"] = token
            refresh = next((t for t, u in self.identity_tokens.items() if u == principal), None)
            if refresh is not None:
                body["refresh_token"] = refresh
        else:
            body["token"] = token
        return self._log(
            request, grant_type, principal, scopes, 200, had_auth, web.json_response(body), granted
        )

    def _basic_principal(self, header: str | None) -> str | None:
        if header is None:
            return ANONYMOUS
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if self.users.get(user) == password else None

    def _granted(self, principal: str, scopes: tuple[str, ...]) -> tuple[str, ...]:
        allowed = self.grants.get(principal, ())
        names: list[str] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or "pull" not in actions.split(","):
                continue
            if ("*" in allowed or name in allowed) and name not in names:
                names.append(name)
        return tuple(names)

    def _log(
        self,
        request: web.Request,
        grant_type: str | None,
        principal: str | None,
        scopes: tuple[str, ...],
        status: int,
        had_auth: bool,
        response: web.StreamResponse,
        granted: tuple[str, ...] = (),
    ) -> web.StreamResponse:
        entry = TokenRequest(
            request.method, grant_type, principal, scopes, granted, status, had_auth
        )
        with self._lock:
            self.requests.append(entry)
        return response


def _bad() -> web.Response:
    return web.json_response({"error": "unsupported_grant_type"}, status=400)
