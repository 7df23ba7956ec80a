"""The user record `{u:<id>}:user`: its field names, written here once.

The registry (`routing/registry.py`) writes the record, the vault keeps the user's data key in
it, erasure marks it, and the hand-over, the transaction store and the outage tracker read a
few fields in their scripts. All of them, their Lua included, name the fields through this
module.
"""

from __future__ import annotations

from string import Template

SERVER_URL = "server_url"
SERVER_PUBLIC_KEY = "server_public_key"
KEY_HISTORY = "key_history"
"""Where each older server key's run of the queue ends (JSON list)."""
CREATED_AT = "created_at"
UPDATED_AT = "updated_at"
TOKEN_HASH = "token_hash"
OLD_TOKEN_HASH = "old_token_hash"
SECRET = "secret"
"""The webhook secret, encrypted by the vault."""
OLD_SECRET = "old_secret"
OLD_UNTIL = "old_until"
"""Until when the old token and secret stay valid after a rotation."""
ERASING = "erasing"
"""Set when an erasure starts: from then on the user is gone for every caller."""
DEK = "dek"
"""The user's data key, wrapped by a master key."""

_ALL = {
    name.lower(): value
    for name, value in dict(globals()).items()
    if name.isupper() and not name.startswith("_") and isinstance(value, str)
}


class _Fields(Template):
    # `$` is Lua's end-of-pattern anchor; `@` appears nowhere in the scripts.
    delimiter = "@"


def lua(script: str) -> str:
    """`script` with each `@field` placeholder (`@server_url`, `@erasing`…) replaced by that
    field's name as a quoted Lua string; an unknown placeholder is an error at import time."""
    return _Fields(script).substitute({name: f"'{value}'" for name, value in _ALL.items()})
