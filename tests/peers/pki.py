"""A throwaway certificate authority for TLS tests, made with the ``openssl`` command line.

:func:`make_pki` writes, into one folder: a CA, a server certificate for ``localhost`` / ``127.0.0.1``
signed by it, two client certificates signed by it (``STORESCU``; ``modality-b`` with the DNS name
``modality-b.example.org``), and a second ("rogue") CA with a client certificate
of its own, which the node must not trust. Keys are unencrypted PEM (RSA 2048), as the node needs them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class Pki:
    """The files of :func:`make_pki` (every ``*_key`` is the key of the certificate beside it)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_cert: Path
    other_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    assert OPENSSL is not None, "openssl is not installed"
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str, san: str = "") -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{x}" for x in ("key", "csr", "crt", "ext"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=folder)
    ext.write_text(f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", ext, cwd=folder)  # fmt: skip
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Write the CA, server, client and rogue files into ``folder`` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "test-ca")
    server = _leaf(folder, "node-server", ca, "serverAuth", "DNS:localhost,IP:127.0.0.1")
    client = _leaf(folder, "STORESCU", ca, "clientAuth")
    other = _leaf(folder, "modality-b", ca, "clientAuth", "DNS:modality-b.example.org")
    rogue_ca = _ca(folder, "rogue-ca")
    rogue = _leaf(folder, "ROGUE", rogue_ca, "clientAuth")
    return Pki(ca[0], *server, *client, *other, rogue_ca[0], *rogue)
