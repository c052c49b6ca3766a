"""Certificates made at run time with openssl: one CA, one key pair per component."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Pki:
    """Writes into `dir`; `ca` signs every other certificate."""

    dir: Path

    @property
    def ca(self) -> KeyPair:
        return KeyPair(self.dir / "ca.crt", self.dir / "ca.key")

    @property
    def service_account(self) -> KeyPair:
        """The token signing pair: `cert` is the public key (PEM), not a certificate."""
        return KeyPair(self.dir / "sa.pub", self.dir / "sa.key")

    @classmethod
    def create(cls, dir: Path) -> Pki:
        dir.mkdir(parents=True, exist_ok=True)
        pki = cls(dir)
        ca = pki.ca
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca.key),
                 "-out", str(ca.cert), "-days", "2", "-subj", "/CN=qaic-e2e-ca")
        sa = pki.service_account
        _openssl("genrsa", "-out", str(sa.key), "2048")
        _openssl("rsa", "-in", str(sa.key), "-pubout", "-out", str(sa.cert))
        return pki

    def issue(
        self, name: str, cn: str, *, orgs: tuple[str, ...] = (), ips: tuple[str, ...] = (),
        dns: tuple[str, ...] = (), server: bool = False,
    ) -> KeyPair:
        pair = KeyPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        csr = self.dir / f"{name}.csr"
        subject = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pair.key),
                 "-out", str(csr), "-subj", subject)
        ext = self.dir / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'serverAuth,clientAuth' if server else 'clientAuth'}"]
        sans = [f"IP:{i}" for i in ips] + [f"DNS:{d}" for d in dns]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca.cert), "-CAkey",
                 str(self.ca.key), "-CAcreateserial", "-out", str(pair.cert), "-days", "2",
                 "-extfile", str(ext))
        return pair


def kubeconfig(path: Path, server: str, ca: Path, client: KeyPair, user: str) -> Path:
    """A kubeconfig with embedded file paths (no base64 copies to keep in step)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n"
        f"clusters:\n- name: e2e\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: {user}\n  user:\n    client-certificate: {client.cert}\n"
        f"    client-key: {client.key}\n"
        f"contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n"
    )
    return path
