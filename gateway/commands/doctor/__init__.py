"""`ally-gateway doctor`: one readable report on everything the gateway depends on.

configuration   settings, development secrets, providers' settings
redis           answers, AOF persistence on, no eviction; queues and erasures in progress
key ring        every data key wrapped by a kid in ALLY_MASTER_KEYS, and opening under it
replication     replicas behind acknowledged writes (ALLY_ACK_REPLICAS)
erasure         erased users compacted out of the AOF (BGREWRITEAOF refused?)
telegram        getMe and getWebhookInfo (webhook URL, pending updates, last error)

Exit status 0 when nothing is wrong (warnings allowed), 1 otherwise. It changes nothing.
The checks (`diagnosis`) are imported when the command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from foundation import config, logs
from foundation.errors import ConfigError
from gateway.commands.doctor.report import Report


def add(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("doctor", help="check configuration, Redis, Telegram, key ring")
    parser.set_defaults(run=None)


def run_unconfigured(_args: argparse.Namespace) -> int:
    """Load the configuration itself: a bad one is reported like any other finding."""
    logs.configure("ERROR")
    report = Report()
    try:
        settings = config.load()
    except ConfigError as exc:
        report.fail("configuration", str(exc))
        report.print(sys.stdout)
        return 1
    from gateway.commands.doctor.diagnosis import diagnose

    asyncio.run(diagnose(settings, report))
    report.print(sys.stdout)
    return 1 if report.failures else 0
