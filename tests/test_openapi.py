"""docs/openapi.yaml is a valid OpenAPI 3.1 document and lists exactly the routes the app serves."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.config import Settings

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def load_spec() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    assert isinstance(spec, dict)
    return spec


def every_channel_on(settings: Settings) -> Settings:
    """Every provider configured, so every channel registers its routes."""
    return dataclasses.replace(
        settings,
        telegram_bot_token="123456789:AAEexampleexampleexampleexampleexam",
        telegram_webhook_secret="webhook-secret-for-tests",
        google_client_id="client-id.apps.example",
        google_client_secret="google-client-secret",
        gmail_pubsub_topic="projects/ally-test/topics/gmail",
        gmail_push_audience="https://gateway.example/gmail/push",
        gmail_push_service_account="push@ally-test.iam.example",
        microsoft_client_id="00000000-0000-0000-0000-000000000000",
        microsoft_client_secret="microsoft-client-secret",
        anthropic_api_key="sk-ant-test-key-0000000000",
        anthropic_base_url="http://127.0.0.1:9",
    )


def served_routes(settings: Settings) -> set[tuple[str, str]]:
    app = create_app(every_channel_on(settings))
    routes = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        # aiohttp adds HEAD next to every GET by itself; it is not a separate operation.
        if route.method == "HEAD":
            continue
        routes.add((route.method.upper(), resource.canonical))
    return routes


def documented_routes(spec: dict[str, Any], *, planned: bool) -> set[tuple[str, str]]:
    """Documented operations; `x-ally-planned` marks contract operations whose channel is still being built."""
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS and bool(op.get("x-ally-planned")) == planned
    }


def test_openapi_file_is_a_valid_openapi_3_1_document():
    spec = load_spec()
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_served_route_is_documented_and_every_documented_route_is_served(settings: Settings):
    served = served_routes(settings)
    spec = load_spec()
    documented = documented_routes(spec, planned=False)
    planned = documented_routes(spec, planned=True)
    assert served - documented - planned == set(), "routes the app serves that docs/openapi.yaml does not list"
    assert documented - served == set(), "routes docs/openapi.yaml lists that the app does not serve"


def test_every_operation_names_its_answers_and_protected_ones_their_credentials():
    spec = load_spec()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert op.get("operationId"), f"{method} {path} has no operationId"
            assert op.get("responses"), f"{method} {path} documents no answer"
            if path.startswith("/admin/"):
                assert op.get("security") == [{"adminToken": []}], f"{method} {path} must name the admin token"
                assert "401" in op["responses"]
            elif path.startswith("/v1/"):
                assert op.get("security") == [{"serverToken": []}], f"{method} {path} must name the server token"
                assert "401" in op["responses"]
