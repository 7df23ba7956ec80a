from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import ConfigError
from gateway.tls import client_context


def write_ca(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ally private test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ca_subjects(context) -> list[str]:
    return [str(c["subject"]) for c in context.get_ca_certs()]


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_a_private_ca_is_added_to_the_system_store_not_put_in_its_place(tmp_path, monkeypatch, variable):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    system = len(client_context().get_ca_certs())
    assert system > 0  # the machine's public CAs are loaded
    write_ca(tmp_path / "ca.pem")
    monkeypatch.setenv(variable, str(tmp_path / "ca.pem"))
    context = client_context()
    assert any("Ally private test CA" in s for s in ca_subjects(context))
    assert len(context.get_ca_certs()) == system + 1


def test_an_unreadable_ca_file_is_a_configuration_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(ConfigError, match="REQUESTS_CA_BUNDLE"):
        client_context()
