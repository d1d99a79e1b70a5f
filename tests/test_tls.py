"""TLS as registries are deployed: a real nginx terminating TLS in front of the real registry.

Certificates come from ``trustme``; nothing here touches /etc: the certs.d root is moved
under ``tmp_path`` with ``PULL_VERIFY_CERTS_D``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from puller.errors import TLSError
from puller.transport import TransportOptions, certificates_for
from tests.kit.cli import Run, one_line_error, verify
from tests.kit.images import push_image, standard_image
from tests.kit.nginx import RunningNginx, Site, TLSFiles, make_tls_files, start_nginx
from tests.kit.registry import RegistryConfig, start_registry

RATE_LIMIT = "100;w=21600"
RATE_REMAINING = "76;w=21600"


@dataclass(frozen=True, slots=True)
class TLSFront:
    nginx: RunningNginx
    tls: TLSFiles
    plain: Site  # TLS, no client certificate needed; adds Docker Hub's RateLimit headers
    mutual: Site  # TLS requiring a client certificate signed by the test CA
    repo: str
    tag: str
    manifest_digest: str

    def ref(self, site: Site) -> str:
        return f"{site.netloc}/{self.repo}:{self.tag}"


@pytest.fixture(scope="module")
def tls_front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSFront]:
    root = tmp_path_factory.mktemp("tls-front")
    with start_registry(RegistryConfig(root=root / "registry")) as registry:
        image = standard_image(31)
        push_image(registry.url, "tls/app", "v1", image)
        tls = make_tls_files(root / "pki")
        plain = Site(
            upstream=registry.url,
            tls=tls,
            name="tls",
            directives=(
                f'        add_header RateLimit-Limit "{RATE_LIMIT}" always;\n'
                f'        add_header RateLimit-Remaining "{RATE_REMAINING}" always;'
            ),
        )
        mutual = Site(upstream=registry.url, tls=tls, verify_client=True, name="mtls")
        with start_nginx(root / "nginx", [plain, mutual]) as nginx:
            yield TLSFront(nginx, tls, plain, mutual, "tls/app", "v1", image.manifest_digest)


@pytest.fixture(autouse=True)
def certs_d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty certs.d root of this test's own; no docker config either."""
    root = tmp_path / "certs.d"
    root.mkdir()
    monkeypatch.setenv("PULL_VERIFY_CERTS_D", str(root))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    return root


def assert_verified(run: Run, front: TLSFront) -> None:
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"Digest: {front.manifest_digest}" in run.stdout


def test_ca_cert_option_verifies_through_nginx_tls(tls_front: TLSFront) -> None:
    run = verify("--ca-cert", str(tls_front.tls.ca_cert), tls_front.ref(tls_front.plain))
    assert_verified(run, tls_front)
    # Every blob went through nginx (proxy_pass), not around it.
    blob_gets = [line for line in tls_front.nginx.log_lines(tls_front.plain) if "/blobs/" in line]
    assert blob_gets
    assert all(" 200 " in line for line in blob_gets)
    # Docker Hub's quota headers are read and shown, in text and in JSON.
    assert f"Rate limit: {RATE_REMAINING} remaining of {RATE_LIMIT}" in run.stderr
    doc = verify(
        "--json", "--ca-cert", str(tls_front.tls.ca_cert), tls_front.ref(tls_front.plain)
    ).json()
    assert doc["rate_limit"] == {"limit": RATE_LIMIT, "remaining": RATE_REMAINING}


def test_untrusted_certificate_is_one_line_tls_error(tls_front: TLSFront, tmp_path: Path) -> None:
    run = verify(tls_front.ref(tls_front.plain))
    assert run.exit_code == 4
    line = one_line_error(run)
    assert f"certificate of {tls_front.plain.netloc} is not trusted" in line
    assert "--ca-cert" in line
    # A CA that did not sign the server's certificate is no better.
    other = make_tls_files(tmp_path / "other-pki")
    wrong = verify("--ca-cert", str(other.ca_cert), tls_front.ref(tls_front.plain))
    assert wrong.exit_code == 4
    assert "is not trusted" in one_line_error(wrong)


def test_tls_verify_false_passes_with_a_warning(tls_front: TLSFront) -> None:
    run = verify("--tls-verify=false", tls_front.ref(tls_front.plain))
    assert_verified(run, tls_front)
    assert "warning: TLS certificate verification is off" in run.stderr
    bad = verify("--tls-verify=maybe", tls_front.ref(tls_front.plain))
    assert bad.exit_code == 2
    assert "--tls-verify takes true or false" in one_line_error(bad)


def test_certs_d_ca_is_trusted_for_its_host_only(
    tls_front: TLSFront, certs_d: Path, tmp_path: Path
) -> None:
    # The CA filed under another host:port does not count for this one.
    elsewhere = certs_d / "127.0.0.1:1"
    elsewhere.mkdir()
    (elsewhere / "ca.crt").write_bytes(tls_front.tls.ca_cert.read_bytes())
    assert verify(tls_front.ref(tls_front.plain)).exit_code == 4
    mine = certs_d / tls_front.plain.netloc
    mine.mkdir()
    (mine / "ca.crt").write_bytes(tls_front.tls.ca_cert.read_bytes())
    assert_verified(verify(tls_front.ref(tls_front.plain)), tls_front)


def test_mutual_tls_passes_only_with_client_certificate(
    tls_front: TLSFront, certs_d: Path, tmp_path: Path
) -> None:
    host_dir = certs_d / tls_front.mutual.netloc
    host_dir.mkdir()
    (host_dir / "ca.crt").write_bytes(tls_front.tls.ca_cert.read_bytes())
    without = verify(tls_front.ref(tls_front.mutual))
    assert without.exit_code == 3, without.stdout + without.stderr
    line = one_line_error(without)
    assert "HTTP 400" in line
    assert "client certificate" in line
    assert not any("/manifests/" in line for line in tls_front.nginx.log_lines(tls_front.mutual))

    tls_front.tls.client_pair(host_dir)
    assert_verified(verify(tls_front.ref(tls_front.mutual)), tls_front)
    manifest_gets = [
        line for line in tls_front.nginx.log_lines(tls_front.mutual) if "/manifests/" in line
    ]
    assert manifest_gets
    assert all(" 200 " in line for line in manifest_gets)

    # --cert-dir, skopeo's spelling: the files directly in one directory.
    cert_dir = tmp_path / "cert-dir"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(tls_front.tls.ca_cert.read_bytes())
    tls_front.tls.client_pair(cert_dir, "me")
    assert_verified(verify("--cert-dir", str(cert_dir), tls_front.ref(tls_front.mutual)), tls_front)


def test_half_a_client_identity_is_refused(certs_d: Path) -> None:
    host_dir = certs_d / "registry.example:5000"
    host_dir.mkdir()
    (host_dir / "client.cert").write_text("not used")
    options = TransportOptions(certs_d=certs_d)
    with pytest.raises(TLSError, match=r"client\.cert has no matching client\.key"):
        certificates_for(options, "registry.example:5000")
    assert certificates_for(options, "other.example").ca_files == ()
