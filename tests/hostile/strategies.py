"""Hypothesis strategies for hostile HTTP: JSON of any shape, valid bodies bent out of shape,
bytes that are not JSON at all, header values, path parts and query strings."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import strategies as st

# Keep examples small: the point is shapes and types, not volume (volume has its own tests).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=24),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def _dumps(value: Any) -> bytes:
    # Integers past 64 bits are valid JSON that orjson will not write; write them by hand.
    try:
        return orjson.dumps(value)
    except TypeError:
        import json

        return json.dumps(value).encode()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """`valid` with one to three fields replaced by any JSON value, or removed."""
    value = copy.deepcopy(valid)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = _paths(value)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = value
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(json_values)
    return value


def bodies(*valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Raw request bodies: bent copies of valid ones, JSON of any shape, and plain bytes."""
    choices: list[st.SearchStrategy[bytes]] = [
        json_values.map(_dumps),
        st.binary(max_size=256),
        st.sampled_from([b"", b"{", b"[]", b"null", b'{"a":1}{"b":2}', b"\xff\xfe{}", b'{"a": NaN}', b"1e99999"]),
    ]
    for body in valid:
        choices.append(mutated(body).map(_dumps))
        choices.append(st.just(_dumps(body)[: len(_dumps(body)) // 2]))
    return st.one_of(*choices)


content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "text/html",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=zzz",
        "application/octet-stream",
        "*/*",
        "application/json; boundary",
        "garbage",
    ]
)

# Header values a client can send: visible ASCII and Latin-1, no line breaks.
header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80
).map(str.strip)

path_parts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["..", ".", "%00", "%2e%2e", "a/../../admin", "\u0000", " ", "%", "%zz", "a" * 600]),
).map(lambda s: quote(s, safe="%") or "x")


@st.composite
def query_strings(draw: st.DrawFn, keys: tuple[str, ...] = ()) -> str:
    """A raw query string: known and random keys, random values, and malformed pieces."""
    names = st.one_of(st.text(max_size=12), *(st.just(k) for k in keys)) if keys else st.text(max_size=12)
    pairs = draw(st.lists(st.tuples(names, st.text(max_size=40)), max_size=5))
    parts = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs]
    parts += draw(st.lists(st.sampled_from(["%zz", "&&", "=", "a=%", "b==c", "%00=%00", ";x=1", "c"]), max_size=3))
    return "&".join(draw(st.permutations(parts)))
