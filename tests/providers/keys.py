"""Throwaway keys for the vendor tests (generated once per session, never real credentials)."""

from __future__ import annotations

from functools import cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def service_account(token_uri: str, project: str = "demo-project") -> dict[str, Any]:
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "kid-1",
        "private_key": pem(rsa_key()),
        "client_email": "rejoin@demo-project.iam.gserviceaccount.com",
        "token_uri": token_uri,
    }
