"""Reading the gateway's Prometheus metrics in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import Gateway


async def scrape(gateway: Gateway) -> dict[str, float]:
    """Every sample, keyed `name{label="value",...}` (labels sorted)."""
    resp = await gateway.client.get("/metrics")
    assert resp.status == 200
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def value(samples: dict[str, float], key: str) -> float:
    return samples.get(key, 0.0)
