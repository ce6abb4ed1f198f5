"""Pinning the checked IP keeps TLS working: SNI and certificate verification use the host name."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from providers.base import ProviderError
from providers.http import HttpCaller
from providers.url_guard import UrlGuard
from tests.providers.clients import outbound


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


async def test_https_to_pinned_ip_verifies_the_host_name(tmp_path: Path, client_kind: str) -> None:
    """An https call pinned to 127.0.0.1 presents SNI `localhost` and accepts only a certificate for it."""
    cert, key = self_signed(tmp_path, "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment,func-returns-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    guard = UrlGuard.of(False, [f"localhost:{port}"])
    client_ctx = ssl.create_default_context(cafile=str(cert))
    try:
        async with outbound(client_kind, ssl_context=client_ctx) as http:
            resp = await HttpCaller(http, guard).request("GET", f"https://localhost:{port}/")
            assert resp.status == 200 and resp.body == "ok" and seen_sni == ["localhost"]
            # The same certificate does not pass for another name pinned to the same address.
            other = UrlGuard.of(False, [f"127.0.0.1:{port}"])
            with pytest.raises(ProviderError, match="CERTIFICATE_VERIFY_FAILED"):
                await HttpCaller(http, other).request("GET", f"https://127.0.0.1:{port}/")
    finally:
        server.close()
