"""Checks an export against the contract's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema


def validate(document: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema()).validate(document)


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(), object_pairs_hook=_no_duplicates)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "export.schema.json"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    # json.loads keeps the last of two equal keys: a part documented twice would hide one of them.
    assert len(keys) == len(set(keys)), f"duplicate keys in the export schema: {keys}"
    return dict(pairs)
