"""Development secrets: an admin token and a master key ring generated once into ALLY_DATA_DIR.

They are logged as paths, never as values. Production refuses them (see config).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import secrets
from pathlib import Path

from foundation.config import Settings, parse_master_keys

log = logging.getLogger(__name__)


def _read_or_create(path: Path, make: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
    log.info("generated a development secret", extra={"path": str(path.resolve())})
    return make


def with_dev_secrets(settings: Settings) -> Settings:
    if settings.production:
        return settings
    changes: dict[str, object] = {}
    if settings.admin_token is None:
        changes["admin_token"] = _read_or_create(settings.data_dir / "admin_token", secrets.token_urlsafe(32))
    if not settings.master_keys:
        key = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        ring = _read_or_create(settings.data_dir / "master_keys", f"dev1:{key}")
        changes["master_keys"] = parse_master_keys(ring, f"{settings.data_dir / 'master_keys'}")
    return dataclasses.replace(settings, **changes) if changes else settings  # type: ignore[arg-type]
