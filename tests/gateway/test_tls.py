from __future__ import annotations

import pytest

from foundation.errors import ConfigError
from foundation.tls import client_context
from tests.support.tlsca import mint


def ca_subjects(context) -> list[str]:
    return [str(c["subject"]) for c in context.get_ca_certs()]


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_a_private_ca_is_added_to_the_system_store_not_put_in_its_place(tmp_path, monkeypatch, variable):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    system = len(client_context().get_ca_certs())
    assert system > 0  # the machine's public CAs are loaded
    monkeypatch.setenv(variable, str(mint(tmp_path).ca_file))
    context = client_context()
    assert any("Ally test CA" in s for s in ca_subjects(context))
    assert len(context.get_ca_certs()) == system + 1


def test_an_unreadable_ca_file_is_a_configuration_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(ConfigError, match="REQUESTS_CA_BUNDLE"):
        client_context()
