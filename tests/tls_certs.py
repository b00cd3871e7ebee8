"""Throw-away X.509 material for TLS tests, made with the `openssl` command line tool.

One CA signs a server certificate (for `localhost` and 127.0.0.1, used by the private broker
and by the daemon's HTTPS listener) and a client certificate; a second, unrelated CA exists
only to be the wrong one. EC P-256 keys: generating them takes milliseconds.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "2"
_CURVE = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *_CURVE, "-keyout", key, "-out", cert, "-days", _DAYS,
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
    )  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("req", *_CURVE, "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=directory)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", _DAYS, "-extfile", ext, cwd=directory,
    )  # fmt: skip
    return cert, key


def make_certs(directory: Path) -> Certs:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ojs-test-ca")
    server = _leaf(directory, "localhost", ca, "serverAuth")
    client = _leaf(directory, "ojs-client", ca, "clientAuth")
    other_ca, _ = _ca(directory, "ojs-wrong-ca")
    return Certs(ca[0], server[0], server[1], client[0], client[1], other_ca)
