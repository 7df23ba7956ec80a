"""The Telegram channel's counters as /metrics shows them: rejections by reason, drops by reason."""

from __future__ import annotations

from tests.support import telegram as tgs
from tests.support.metrics import scrape, value
from tests.support.telegram_gateway import SECRET, TgGateway

STRANGER = tgs.person(6660001, "Mallory", None)


async def test_webhook_rejections_and_drops_are_counted_by_reason(tg: TgGateway):
    before = await scrape(tg)
    update = tgs.text(tgs.private_chat(STRANGER), STRANGER, "hi")
    assert (await tg.post_update(update, secret="wrong-secret")).status == 401
    assert (await tg.post_update(update, secret=None)).status == 401
    resp = await tg.client.post(
        f"/telegram/webhook/{tgs.BOT_ID}",
        data=b"[1, 2]",
        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
    )
    assert resp.status == 400
    assert (await tg.post_update(update)).status == 200  # a chat nobody linked
    after = await scrape(tg)

    def delta(key: str) -> float:
        return value(after, key) - value(before, key)

    assert delta('ally_webhook_rejected_total{channel="telegram",reason="bad_secret"}') == 2
    assert delta('ally_webhook_rejected_total{channel="telegram",reason="malformed"}') == 1
    assert delta('ally_inbound_dropped_total{channel="telegram",reason="unlinked_chat"}') == 1
    assert delta('ally_events_in_total{channel="telegram"}') == 0
