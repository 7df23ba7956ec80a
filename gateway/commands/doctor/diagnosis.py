"""The doctor's checks, in the order the report shows them."""

from __future__ import annotations

import dataclasses
from typing import Any

from foundation import config
from foundation.storage import connect
from gateway.commands.doctor.configuration import check_configuration, check_data_dir, check_providers
from gateway.commands.doctor.durability import check_compaction, check_replicas
from gateway.commands.doctor.report import Report
from gateway.commands.doctor.storage import check_key_ring, check_queues, check_redis, redis_target, shown_url
from gateway.commands.doctor.telegram import check_telegram


async def diagnose(settings: config.Settings, report: Report) -> None:
    settings, dev = _existing_dev_secrets(settings)
    check_configuration(settings, report, dev)
    check_providers(settings, report)
    check_data_dir(settings, report)
    target = redis_target(settings)
    redis = connect(target, cluster=settings.redis_cluster)
    try:
        if await check_redis(redis, shown_url(target), report):
            if settings.master_keys:
                await check_key_ring(redis, settings, report)
            else:
                report.fail("key ring", "no master keys (ALLY_MASTER_KEYS unset, none generated yet)")
            await check_queues(redis, settings, report)
            await check_replicas(redis, settings, report)
            await check_compaction(redis, settings, report)
    finally:
        await redis.aclose()
    await check_telegram(settings, report)


def _existing_dev_secrets(settings: config.Settings) -> tuple[config.Settings, list[str]]:
    """Development secrets already generated into ALLY_DATA_DIR (the doctor generates none)."""
    if settings.production:
        return settings, []
    changes: dict[str, Any] = {}
    admin = settings.data_dir / "admin_token"
    ring = settings.data_dir / "master_keys"
    if settings.admin_token is None and admin.is_file():
        changes["admin_token"] = admin.read_text().strip()
    if not settings.master_keys and ring.is_file():
        changes["master_keys"] = config.parse_master_keys(ring.read_text().strip(), str(ring))
    found: list[str] = [name for name in ("admin_token", "master_keys") if name in changes]
    return (dataclasses.replace(settings, **changes) if changes else settings), found
