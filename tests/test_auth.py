"""Token auth against the real registry (``auth: token``) and a real token server.

The registry trusts the certificate of ``TokenIssuer``; the token server (aiohttp, in a
thread) mints tokens with it and enforces scope, so a token for one repository cannot pull
another. Refresh is proved by the token server's request log, never by waiting.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import pytest

from puller.auth.challenge import parse_challenges
from puller.auth.tokens import Authenticator, Credentials
from puller.errors import AuthError
from puller.pull import NoProgress, Puller, PullOptions
from puller.reference import parse_reference
from puller.registry import RegistryClient
from puller.report import ImageResult, PullResult
from puller.transport import open_session
from tests.kit.cli import one_line_error, verify
from tests.kit.client import basic_auth_header
from tests.kit.images import push_image, standard_image
from tests.kit.nginx import Site, start_nginx
from tests.kit.registry import (
    BasicAuthRegistry,
    RegistryConfig,
    RunningRegistry,
    free_port,
    start_registry,
)
from tests.kit.tokens import Access, TokenIssuer
from tests.kit.tokenserver import ANONYMOUS, TokenServer

PASSWORD = "s3cret-Pa55word-for-alice"


@dataclass(frozen=True, slots=True)
class TokenRegistry:
    registry: RunningRegistry
    server: TokenServer
    digests: dict[str, str]  # repository -> manifest digest of its tag v1

    def ref(self, repo: str) -> str:
        return f"{self.registry.host}/{repo}:v1"


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    root = tmp_path_factory.mktemp("token-auth")
    issuer = TokenIssuer.create(root / "issuer")
    server = TokenServer(
        issuer,
        users={"alice": PASSWORD},
        grants={"alice": {"team/a"}, ANONYMOUS: {"public/p"}},
    )
    with server.start():
        config = RegistryConfig(root=root / "registry", token_auth=issuer.auth_config(server.realm))
        with start_registry(config) as registry:
            digests = {}
            for seed, repo in enumerate(("team/a", "team/b", "public/p")):
                image = standard_image(40 + seed)
                push = issuer.mint([Access(repo, ("pull", "push"))])
                push_image(registry.url, repo, "v1", image, auth_header=f"Bearer {push}")
                digests[repo] = image.manifest_digest
            yield TokenRegistry(registry, server, digests)


@pytest.fixture
def tokens(
    token_setup: TokenRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> TokenRegistry:
    """The shared registry with the token server's knobs and log reset for this test."""
    server = token_setup.server
    server.expires_in, server.expired_next, server.accept_get = 300, 0, True
    server.requests.clear()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    return token_setup


def as_alice(ref: str, *more: str) -> list[str]:
    return ["-u", "alice", "--password-stdin", *more, ref]


def test_token_grants_its_repository(tokens: TokenRegistry) -> None:
    run = verify(*as_alice(tokens.ref("team/a")), stdin=PASSWORD + "\n")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"Digest: {tokens.digests['team/a']}" in run.stdout
    fetched = [r for r in tokens.server.requests if "repository:team/a:pull" in r.scopes]
    assert fetched
    assert all(r.principal == "alice" and r.had_authorization for r in fetched)
    assert all(r.granted == ("team/a",) for r in fetched)
    assert PASSWORD not in run.stdout + run.stderr


def test_token_for_one_repository_cannot_pull_another(tokens: TokenRegistry) -> None:
    run = verify(*as_alice(tokens.ref("team/b")), stdin=PASSWORD + "\n")
    assert run.exit_code == 3
    line = one_line_error(run)
    assert "access denied" in line
    assert "does not grant repository:team/b:pull" in line
    # The server was asked, and granted nothing for team/b.
    asked = [r for r in tokens.server.requests if "repository:team/b:pull" in r.scopes]
    assert asked
    assert all(r.granted == () for r in asked)


def test_anonymous_token_pulls_public_but_not_private(tokens: TokenRegistry) -> None:
    public = verify(tokens.ref("public/p"))
    assert public.exit_code == 0, public.stdout + public.stderr
    assert all(not r.had_authorization for r in tokens.server.requests)
    private = verify(tokens.ref("team/a"))
    assert private.exit_code == 3
    line = one_line_error(private)
    assert "does not grant repository:team/a:pull to anonymous users" in line


def test_wrong_password_is_one_sentence(tokens: TokenRegistry) -> None:
    run = verify(*as_alice(tokens.ref("team/a")), stdin="wrong-password\n")
    assert run.exit_code == 3
    line = one_line_error(run)
    assert "was refused (HTTP 401): wrong username or password for 'alice'" in line
    assert "wrong-password" not in run.stdout + run.stderr


def test_password_grant_when_the_server_wants_oauth2(tokens: TokenRegistry) -> None:
    tokens.server.accept_get = False
    run = verify(*as_alice(tokens.ref("team/a")), stdin=PASSWORD + "\n")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert tokens.server.count(method="POST", grant_type="password") >= 1


def test_refused_token_is_one_sentence(tokens: TokenRegistry) -> None:
    tokens.server.expired_next = 1000  # every token is already expired past the leeway
    run = verify(*as_alice(tokens.ref("team/a")), stdin=PASSWORD + "\n")
    assert run.exit_code == 3
    line = one_line_error(run)
    assert "access denied (HTTP 401): the registry refused the token from" in line
    assert "Bearer" not in run.stdout + run.stderr


# -- refresh during a pull, proved by the token server's log --------------------------------


class ClockJump(NoProgress):
    """Moves the authenticator's clock far ahead once the config is verified, before any
    layer is fetched: to the client every cached token is then past its expiry."""

    def __init__(self, server: TokenServer, *, expired_tokens: int = 0) -> None:
        self.offset = 0.0
        self.server = server
        self.expired_tokens = expired_tokens
        self.requests_before_jump = -1

    def clock(self) -> float:
        return 1000.0 + self.offset

    def image_started(self, image: ImageResult) -> None:
        self.requests_before_jump = len(self.server.requests)
        self.server.expired_next = self.expired_tokens
        self.offset += 10_000.0


def pull_with_clock(tokens: TokenRegistry, repo: str, jump: ClockJump) -> PullResult:
    reference = parse_reference(tokens.ref(repo))
    options = PullOptions()

    async def main() -> PullResult:
        async with open_session(options.transport) as session:
            auth = Authenticator(
                reference.api_host, Credentials("alice", PASSWORD), clock=jump.clock
            )
            client = RegistryClient(session, reference.api_host, scheme="http", authenticator=auth)
            await client.ping()
            return await Puller(client, options, progress=jump).pull(reference)

    result = anyio.run(main, backend="asyncio")
    assert isinstance(result, PullResult)
    return result


def test_token_refreshed_before_expiry_mid_pull(tokens: TokenRegistry) -> None:
    jump = ClockJump(tokens.server)
    result = pull_with_clock(tokens, "team/a", jump)
    assert result.ok, result.worst_error
    assert len(result.images[0].layers) > 1
    after = tokens.server.requests[jump.requests_before_jump :]
    # Exactly one new token for the repository, although several layers start at once,
    # and every one was accepted (no 401 made us ask again).
    assert [r.scopes for r in after] == [("repository:team/a:pull",)]
    assert all(r.status == 200 for r in after)


def test_refused_token_fetched_again_once_mid_pull(tokens: TokenRegistry) -> None:
    # The refreshed token is one the registry refuses: the layer requests meet a 401 and
    # the client fetches once more (once, not once per layer), then the pull completes.
    jump = ClockJump(tokens.server, expired_tokens=1)
    result = pull_with_clock(tokens, "team/a", jump)
    assert result.ok, result.worst_error
    after = tokens.server.requests[jump.requests_before_jump :]
    assert len(after) == 2
    assert tokens.server.expired_next == 0


# -- credentials stay home --------------------------------------------------------------------


def test_authorization_never_follows_a_redirect_to_another_host(
    basic_auth_registry: BasicAuthRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nginx A fronts the registry but sends blob GETs (307) to nginx B on another loopback
    host, which logs whether an Authorization header arrived (and supplies its own upstream
    credentials, as a CDN signs its own URLs)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    reg = basic_auth_registry
    image = standard_image(50)
    push_image(reg.url, "cdn/app", "v1", image, auth_header=reg.auth_header)
    cdn = Site(
        upstream=reg.url,
        host="127.0.0.2",
        name="cdn",
        proxy_headers={"Authorization": reg.auth_header},
    )
    cdn.port = free_port(cdn.host)  # the redirect names B's port, so pick it first
    front = Site(
        upstream=reg.url,
        name="front",
        directives=(
            "        location ~ ^/v2/.+/blobs/ {\n"
            f"            return 307 http://{cdn.netloc}$request_uri;\n"
            "        }"
        ),
    )
    with start_nginx(tmp_path / "nginx", [front, cdn]) as nginx:
        ref = f"{front.netloc}/cdn/app:v1"
        run = verify(
            "--json", "-u", reg.username, "--password-stdin", ref, stdin=reg.password + "\n"
        )
        assert run.exit_code == 0, run.stdout + run.stderr
    front_blobs = [line for line in nginx.log_lines(front) if "/blobs/" in line]
    cdn_blobs = [line for line in nginx.log_lines(cdn) if "/blobs/" in line]
    assert front_blobs
    assert all(" 307 auth=yes" in line for line in front_blobs)
    assert len(cdn_blobs) == len(front_blobs)
    assert all(" 200 auth=no" in line for line in cdn_blobs)
    # Neither the password nor the header built from it is ever printed.
    basic = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    for secret in (reg.password, basic):
        assert secret not in run.stdout + run.stderr


def test_secrets_stay_out_of_reprs() -> None:
    creds = Credentials("alice", PASSWORD, identity_token="idtok-123")
    auth = Authenticator("registry.example", creds)
    for text in (repr(creds), repr(auth), str(AuthError("x"))):
        assert PASSWORD not in text
        assert "idtok-123" not in text
    assert "alice" in repr(auth)


def test_basic_auth_header_helper_matches_ours() -> None:
    assert Credentials("u", "p").basic_header() == basic_auth_header("u", "p")


def test_credentials_never_go_to_a_plain_http_realm_on_another_host() -> None:
    # Refused before any request: the .invalid realm (RFC 2606) is never resolved or contacted.
    challenge = parse_challenges('Bearer realm="http://tokens.invalid/token",service="reg"')

    async def ask(auth: Authenticator) -> str:
        async with aiohttp.ClientSession() as session:
            return await auth.answer(session, challenge, "repository:a/b:pull")

    strict = Authenticator("registry.example", Credentials("alice", PASSWORD))
    with pytest.raises(AuthError, match="refusing to send credentials over plain HTTP"):
        anyio.run(ask, strict)
    assert strict.token_requests == 0
