"""Throwaway CAs and certificates for TLS tests, made with the `openssl` CLI (EC P-256, 1 day)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) of a new self-signed CA."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
    )  # fmt: skip
    return cert, key


def make_cert(directory: Path, ca: tuple[Path, Path], cn: str, server: bool = False) -> tuple[Path, Path]:
    """(certificate, key) signed by `ca` with common name `cn` (server: SAN 127.0.0.1, localhost)."""
    cert, key, csr = directory / f"{cn}.pem", directory / f"{cn}.key", directory / f"{cn}.csr"
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
    )  # fmt: skip
    ext = directory / f"{cn}.ext"
    usage = "serverAuth" if server else "clientAuth"
    san = "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""
    ext.write_text(f"{san}extendedKeyUsage={usage}\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext),
    )  # fmt: skip
    return cert, key
