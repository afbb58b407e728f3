"""The secured deployment's files, from the README's openssl / ssh-keygen commands or from
the ``cryptography`` fallback, are what Flower and flsplit load: CA-signed certificates
naming 127.0.0.1 and OpenSSH EC key pairs on a NIST curve."""

from __future__ import annotations

import ipaddress
import os
import shutil

import pytest

from benchmarks import deployment

cryptography = pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.serialization import (  # noqa: E402
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)


def _check(directory):
    ca = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for server in ("superlink", "helper0"):
        cert = x509.load_pem_x509_certificate((directory / f"{server}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
        key = load_pem_private_key((directory / f"{server}.key").read_bytes(), None)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    for node in ("helper0", "client0"):
        private = load_ssh_private_key((directory / f"{node}-auth").read_bytes(), None)
        public = load_ssh_public_key((directory / f"{node}-auth.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        assert public.public_numbers() == private.public_key().public_numbers()


@pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("ssh-keygen")),
    reason="needs openssl and ssh-keygen",
)
def test_the_readme_commands_make_what_flower_loads(tmp_path):
    deployment.make_secrets(tmp_path, ["helper0"], ["helper0", "client0"], dict(os.environ))
    _check(tmp_path)


def test_without_openssl_the_cryptography_package_makes_the_same(tmp_path):
    deployment._secrets_with_cryptography(tmp_path, ["helper0"], ["helper0", "client0"])
    _check(tmp_path)
