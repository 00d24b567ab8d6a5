"""A throw-away certificate authority for the TLS tests, made with the openssl CLI."""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
SERVER_EXTENSIONS = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "basicConstraints=CA:FALSE\n"
    "keyUsage=digitalSignature\n"
    "extendedKeyUsage=serverAuth\n"
)
CLIENT_EXTENSIONS = (
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    """The CA certificate that signed `cert`: what clients must trust."""
    cert: Path
    """A server certificate for 127.0.0.1 and localhost."""
    key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting it must fail verification."""
    other_key: Path
    """The key of `other_ca`, which does not match `cert`."""
    client_cert: Path
    """A client certificate signed by `ca` (for mutual TLS)."""
    client_key: Path


def _openssl(*args: str | Path) -> None:
    # `make test` installs stunnel4, which depends on openssl; a skip would hide the TLS tests.
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl CLI is needed to make test certificates"
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)


def make_pki(directory: Path) -> Pki:
    d = directory
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-days", "2", "-subj", f"/CN=test-{name}", *EC_KEY,
                 "-keyout", d / f"{name}.key", "-out", d / f"{name}.pem")  # fmt: skip
    _openssl("req", "-new", "-subj", "/CN=localhost", *EC_KEY,
             "-keyout", d / "server.key", "-out", d / "server.csr")  # fmt: skip
    (d / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl("x509", "-req", "-days", "2", "-in", d / "server.csr", "-CA", d / "ca.pem",
             "-CAkey", d / "ca.key", "-CAcreateserial", "-extfile", d / "server.ext",
             "-out", d / "server.pem")  # fmt: skip
    _openssl("req", "-new", "-subj", "/CN=session-metrics", *EC_KEY,
             "-keyout", d / "client.key", "-out", d / "client.csr")  # fmt: skip
    (d / "client.ext").write_text(CLIENT_EXTENSIONS)
    _openssl("x509", "-req", "-days", "2", "-in", d / "client.csr", "-CA", d / "ca.pem",
             "-CAkey", d / "ca.key", "-CAcreateserial", "-extfile", d / "client.ext",
             "-out", d / "client.pem")  # fmt: skip
    return Pki(
        ca=d / "ca.pem",
        cert=d / "server.pem",
        key=d / "server.key",
        other_ca=d / "other-ca.pem",
        other_key=d / "other-ca.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )
