"""Outbound TLS: the system trust store, plus a private CA named by SSL_CERT_FILE or REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import os
import ssl

from gateway.errors import ConfigError

CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    # OpenSSL reads SSL_CERT_FILE as a *replacement* of its default bundle; load the compiled-in
    # system locations explicitly so the variables add a CA instead of hiding the public ones.
    paths = ssl.get_default_verify_paths()
    if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile):
        context.load_verify_locations(cafile=paths.openssl_cafile)
    if paths.openssl_capath and os.path.isdir(paths.openssl_capath):
        context.load_verify_locations(capath=paths.openssl_capath)
    for name in CA_VARIABLES:
        path = os.environ.get(name)
        if not path:
            continue
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{name} does not name a readable PEM file of CA certificates") from exc
    return context
