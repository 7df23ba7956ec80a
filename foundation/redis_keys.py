"""Redis key names. Every key of one user carries the hash tag `{u:<user_id>}`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "ally:"

    def user_tag(self, user_id: str) -> str:
        return f"{self.prefix}{{u:{user_id}}}"

    def user_pattern(self, user_id: str) -> str:
        """SCAN pattern matching every key of one user (user ids hold no glob characters)."""
        return f"{self.user_tag(user_id)}:*"

    def user(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:user"

    def dek(self, user_id: str) -> str:
        """Where older versions kept the user's data key (now the field `dek` of `user`)."""
        return f"{self.user_tag(user_id)}:dek"

    def queue(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:q"

    def queue_bytes(self, user_id: str) -> str:
        """Sealed bytes held in `queue` (kept by the hand-over and the delivery worker)."""
        return f"{self.user_tag(user_id)}:qbytes"

    def overflow(self, user_id: str) -> str:
        """Events dropped while the queue was full, not yet reported to the server."""
        return f"{self.user_tag(user_id)}:overflow"

    def txn(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:txn"

    def lease(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:lease"

    def seen(self, user_id: str, scope: str) -> str:
        return f"{self.user_tag(user_id)}:seen:{scope}"

    def counters(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:counters"

    def user_key(self, user_id: str, name: str) -> str:
        """A channel's own per-user key, e.g. `user_key(uid, "tg:chats")`."""
        return f"{self.user_tag(user_id)}:{name}"

    def erasing(self, user_id: str) -> str:
        # Kept outside the user's tag so that deleting the user's keys does not delete it.
        return f"{self.prefix}erasing:{user_id}"

    @property
    def users(self) -> str:
        return f"{self.prefix}users"

    @property
    def due(self) -> str:
        return f"{self.prefix}due"

    @property
    def queue_stats(self) -> str:
        """Queue totals over all users, as the last sweep counted them."""
        return f"{self.prefix}queue:stats"

    @property
    def wake_channel(self) -> str:
        return f"{self.prefix}wake"

    def global_key(self, name: str) -> str:
        return f"{self.prefix}{name}"
