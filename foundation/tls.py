"""Outbound TLS: the system trust store, plus a private CA named by SSL_CERT_FILE or REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import functools
import os
import ssl

from foundation.errors import ConfigError

CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def client_context() -> ssl.SSLContext:
    """The context every outbound client uses. It is shared (loading trust stores costs a tenth of a
    second each time) and must not be modified; a change of the variables gives a new one."""
    return _context(tuple(os.environ.get(name) or "" for name in CA_VARIABLES))


@functools.lru_cache(maxsize=4)
def _context(extra: tuple[str, ...]) -> ssl.SSLContext:
    # OpenSSL reads SSL_CERT_FILE as a *replacement* of its default bundle, so the default
    # locations are loaded explicitly (and only once: no load_default_certs as well), and the
    # variables add a CA instead of hiding the public ones.
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if paths.openssl_capath and os.path.isdir(paths.openssl_capath) else None
    context = ssl.create_default_context(cafile=cafile, capath=capath)
    loaded = {os.path.realpath(cafile)} if cafile else set()
    for name, path in zip(CA_VARIABLES, extra, strict=True):
        # Often both variables name the system bundle itself: each file is read once.
        if not path or os.path.realpath(path) in loaded:
            continue
        loaded.add(os.path.realpath(path))
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{name} does not name a readable PEM file of CA certificates") from exc
    return context
