"""The docker client's config.json: ``auths`` (base64 ``auth``, ``identitytoken``),
``credsStore`` and ``credHelpers`` with a real helper program written by the test."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from puller.auth.dockerconfig import (
    DOCKER_HUB_KEY,
    docker_credentials,
    load_docker_config,
    normalize_host,
)
from puller.auth.tokens import Credentials
from puller.errors import AuthError
from tests.kit.cli import one_line_error, verify
from tests.kit.images import push_image, standard_image
from tests.kit.registry import BasicAuthRegistry, RegistryConfig, start_registry
from tests.kit.tokens import Access, TokenIssuer
from tests.kit.tokenserver import TokenServer

HELPER = """#!/bin/sh
# docker-credential-{name}: answers `get` for one server, says "not found" for any other.
read -r server
echo "$server" >> "{log}"
if [ "$1" = get ] && [ "$server" = "{server}" ]; then
  printf '%s' '{answer}'
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
"""


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DOCKER_CONFIG points at an empty directory of this test; a bin dir leads PATH."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PULL_VERIFY_CERTS_D", str(tmp_path / "certs.d"))
    return directory


def write_config(directory: Path, doc: dict[str, object]) -> None:
    (directory / "config.json").write_text(json.dumps(doc))


def write_helper(directory: Path, name: str, server: str, username: str, secret: str) -> Path:
    log = directory.parent / f"helper-{name}.log"
    answer = json.dumps({"ServerURL": server, "Username": username, "Secret": secret})
    path = directory.parent / "bin" / f"docker-credential-{name}"
    path.write_text(HELPER.format(name=name, log=log, server=server, answer=answer))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return log


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def private_image(basic_auth_registry: BasicAuthRegistry) -> str:
    reg = basic_auth_registry
    push_image(reg.url, "private/app", "v1", standard_image(60), auth_header=reg.auth_header)
    return f"{reg.host}/private/app:v1"


# -- pure lookups -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [DOCKER_HUB_KEY, "index.docker.io", "docker.io", "https://registry-1.docker.io/v2/"],
)
def test_docker_hub_spellings_resolve(docker_config: Path, key: str) -> None:
    write_config(docker_config, {"auths": {key: {"auth": b64("hubuser:hubpass")}}})
    config = load_docker_config()
    assert config is not None
    found = docker_credentials("docker.io", config)
    assert found == Credentials("hubuser", "hubpass")
    assert docker_credentials("ghcr.io", config) is None
    assert normalize_host(key) == "docker.io"


def test_broken_config_is_one_sentence_without_secrets(docker_config: Path) -> None:
    write_config(docker_config, {"auths": {"r.example": {"auth": "!!not-base64-Zm9v"}}})
    with pytest.raises(AuthError, match=r"'auth' of 'r\.example' is not base64") as info:
        docker_credentials("r.example")
    assert "Zm9v" not in str(info.value)


def test_helper_gets_hubs_legacy_server_name(docker_config: Path) -> None:
    log = write_helper(docker_config, "hub", DOCKER_HUB_KEY, "hubuser", "hubsecret")
    write_config(docker_config, {"credHelpers": {"docker.io": "hub"}})
    assert docker_credentials("docker.io") == Credentials("hubuser", "hubsecret")
    assert log.read_text().split() == [DOCKER_HUB_KEY]


# -- end to end against real registries ------------------------------------------------------


def test_auths_base64_auth_logs_in(
    docker_config: Path, basic_auth_registry: BasicAuthRegistry, private_image: str
) -> None:
    reg = basic_auth_registry
    auth = b64(f"{reg.username}:{reg.password}")
    write_config(docker_config, {"auths": {f"https://{reg.host}": {"auth": auth}}})
    run = verify(private_image)
    assert run.exit_code == 0, run.stdout + run.stderr
    assert reg.password not in run.stdout + run.stderr

    wrong = b64(f"{reg.username}:not-the-password")
    write_config(docker_config, {"auths": {reg.host: {"auth": wrong}}})
    refused = verify(private_image)
    assert refused.exit_code == 3
    line = one_line_error(refused)
    assert f"refused the username and password for {reg.username!r}" in line
    assert "not-the-password" not in refused.stdout + refused.stderr


@pytest.mark.parametrize("form", ["credHelpers", "credsStore"])
def test_credential_helper_logs_in(
    docker_config: Path, basic_auth_registry: BasicAuthRegistry, private_image: str, form: str
) -> None:
    reg = basic_auth_registry
    log = write_helper(docker_config, "pvtest", reg.host, reg.username, reg.password)
    doc: dict[str, object] = (
        {"credHelpers": {reg.host: "pvtest"}} if form == "credHelpers" else {"credsStore": "pvtest"}
    )
    write_config(docker_config, doc)
    run = verify(private_image)
    assert run.exit_code == 0, run.stdout + run.stderr
    # Asked once, with the registry's host on stdin.
    assert log.read_text().split() == [reg.host]


def test_missing_helper_is_one_sentence(
    docker_config: Path, basic_auth_registry: BasicAuthRegistry, private_image: str
) -> None:
    write_config(docker_config, {"credsStore": "absent-helper"})
    run = verify(private_image)
    assert run.exit_code == 3
    assert "docker-credential-absent-helper named in the docker config is not on PATH" in (
        one_line_error(run)
    )


def test_username_option_wins_over_config(
    docker_config: Path, basic_auth_registry: BasicAuthRegistry, private_image: str
) -> None:
    reg = basic_auth_registry
    write_config(docker_config, {"credsStore": "absent-helper"})
    run = verify("-u", reg.username, "--password-stdin", private_image, stdin=reg.password)
    assert run.exit_code == 0, run.stdout + run.stderr


def test_identity_token_uses_oauth2_refresh_grant(docker_config: Path, tmp_path: Path) -> None:
    issuer = TokenIssuer.create(tmp_path / "issuer")
    identity = "identity-token-of-alice-0123456789"
    server = TokenServer(issuer, identity_tokens={identity: "alice"}, grants={"alice": {"team/a"}})
    with server.start():
        config = RegistryConfig(
            root=tmp_path / "registry", token_auth=issuer.auth_config(server.realm)
        )
        with start_registry(config) as registry:
            token = issuer.mint([Access("team/a", ("pull", "push"))])
            push_image(
                registry.url, "team/a", "v1", standard_image(61), auth_header=f"Bearer {token}"
            )
            ref = f"{registry.host}/team/a:v1"
            entry = {"auth": b64("alice:"), "identitytoken": identity}
            write_config(docker_config, {"auths": {registry.host: entry}})
            run = verify("--json", ref)
            assert run.exit_code == 0, run.stdout + run.stderr
            assert identity not in run.stdout + run.stderr
            grants = {r.grant_type for r in server.requests}
            assert grants == {"refresh_token"}
            assert all(r.principal == "alice" for r in server.requests)

            # A revoked identity token: one sentence, exit 3.
            entry["identitytoken"] = "revoked-token"
            write_config(docker_config, {"auths": {registry.host: entry}})
            revoked = verify(ref)
            assert revoked.exit_code == 3
            assert "the identity token from the docker config is not valid" in one_line_error(
                revoked
            )
