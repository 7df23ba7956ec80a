"""Random hex for ids, from the operating system's CSPRNG, read in blocks.

Every event, transaction and request gets a fresh random id; one `os.urandom` call each was one
system call each. The bytes come from `os.urandom` all the same, a block at a time, and no byte
is handed out twice. A forked child (`serve --workers N`) starts with an empty block: it must
never hand out the bytes its parent had read but not used.
"""

from __future__ import annotations

import os

BLOCK = 4096

_pool = b""
_at = 0


def hex_token(nbytes: int) -> str:
    """`nbytes` random bytes as lowercase hex (as `os.urandom(nbytes).hex()`)."""
    global _pool, _at
    end = _at + nbytes
    if end > len(_pool):
        _pool, _at, end = os.urandom(max(BLOCK, nbytes)), 0, nbytes
    token = _pool[_at:end].hex()
    _at = end
    return token


def _forget() -> None:
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget)
