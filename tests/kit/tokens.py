"""Mint registry bearer tokens (JWT) that a token-auth registry accepts.

Layer: test kit, pure except ``TokenIssuer.create`` (writes the key and certificate).

distribution's ``auth.token`` verifies a JWT against the certificates in its
``rootcertbundle``: the token's header carries the signing certificate (``x5c``), which must
chain to the bundle; ``iss`` must equal the configured issuer, ``aud`` the service, and the
``access`` claim must grant the repository scope asked for. Here the bundle holds one
self-signed certificate and tokens are signed (ES256) with its key.

This module mints tokens only; a test that needs a token *endpoint* (the realm) serves
``mint()`` results from a server of its own.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kit.registry import TokenAuthConfig


@dataclass(frozen=True, slots=True)
class Access:
    """One grant in a token's ``access`` claim, e.g. ``Access("repo/name", ("pull",))``."""

    name: str
    actions: Sequence[str] = ("pull",)
    type: str = "repository"

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    """A signing key, its self-signed certificate (the registry's bundle) and claims."""

    key: ec.EllipticCurvePrivateKey
    cert_der: bytes
    bundle_path: Path
    issuer: str = "pull-verify-test-issuer"
    service: str = "pull-verify-test-registry"

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        issuer: str = "pull-verify-test-issuer",
        service: str = "pull-verify-test-registry",
    ) -> TokenIssuer:
        """Generate a P-256 key and certificate; write the bundle to ``directory``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pull-verify token signer")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        bundle = directory / "token-bundle.pem"
        bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(
            key=key,
            cert_der=cert.public_bytes(serialization.Encoding.DER),
            bundle_path=bundle,
            issuer=issuer,
            service=service,
        )

    def auth_config(self, realm: str) -> TokenAuthConfig:
        """The registry side: ``RegistryConfig(token_auth=issuer.auth_config(realm))``."""
        return TokenAuthConfig(
            realm=realm, service=self.service, issuer=self.issuer, rootcertbundle=self.bundle_path
        )

    def mint(
        self,
        access: Sequence[Access],
        *,
        ttl: float = 300.0,
        subject: str = "tester",
        issuer: str | None = None,
        audience: str | None = None,
        now: float | None = None,
    ) -> str:
        """A signed JWT granting ``access``; ``issuer``/``audience`` override to make bad ones."""
        issued = time.time() if now is None else now
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "iat": int(issued),
            "nbf": int(issued) - 10,
            "exp": int(issued + ttl),
            "jti": secrets.token_hex(8),
            "access": [grant.claim() for grant in access],
        }
        headers = {"x5c": [base64.b64encode(self.cert_der).decode("ascii")]}
        return jwt.encode(claims, self.key, algorithm="ES256", headers=headers)
