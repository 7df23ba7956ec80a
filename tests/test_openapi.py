"""docs/openapi.yaml is a valid OpenAPI 3.1 document and lists exactly the routes the app serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS31Validator, validate
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource

from foundation.config import Settings
from foundation.types import Event
from gateway.app import create_app
from routing.handoff import Item
from tests.support.dedicated import DedicatedServer
from tests.support.gateway import Gateway, every_channel_on, make_settings

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def load_spec() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    assert isinstance(spec, dict)
    return spec


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """This module's gateway runs with every channel on, so their status and export parts are checked too."""
    return every_channel_on(make_settings(tmp_path))


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
    validate_spec(spec, base_uri=SPEC_PATH.as_uri())  # the export schema is a file beside it


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


def answer_schema(spec: dict[str, Any], method: str, path: str, status: int, content: str) -> dict[str, Any]:
    """The schema docs/openapi.yaml gives for this answer, standalone (components alongside for $refs)."""
    responses = spec["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which docs/openapi.yaml does not list"
    response = responses[str(status)]
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"][content]["schema"]
    return {"$id": SPEC_PATH.as_uri(), "allOf": [schema], "components": spec["components"]}


def file_schemas() -> Registry[Any]:
    """The JSON Schema files docs/openapi.yaml refers to, by their file URI and their own $id."""
    registry: Registry[Any] = Registry()
    for path in SPEC_PATH.parent.glob("*.schema.json"):
        resource: Resource[Any] = Resource.from_contents(json.loads(path.read_text()))
        registry = registry.with_resource(path.as_uri(), resource)
        if resource.id():
            registry = registry.with_resource(str(resource.id()), resource)
    return registry


class Conformance:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.spec = load_spec()
        self.registry = file_schemas()

    async def call(self, method: str, template: str, path: str, *, admin: bool = False, **kwargs: Any) -> Any:
        client = self.gateway.client
        resp = await (self.gateway.admin(method, path, **kwargs) if admin else client.request(method, path, **kwargs))
        content = resp.headers.get("Content-Type", "").split(";")[0]
        schema = answer_schema(self.spec, method, template, resp.status, content)
        body = await resp.json() if content == "application/json" else await resp.text()
        validate(body, schema, cls=OAS31Validator, registry=self.registry)
        assert resp.headers.get("X-Request-Id"), "every answer carries X-Request-Id"
        return resp.status, body


async def test_answers_match_their_documented_schemas(gateway: Gateway, dedicated: DedicatedServer):
    check = Conformance(gateway)
    user = "/admin/v1/users/{user_id}"
    assert (await check.call("GET", "/healthz", "/healthz"))[0] == 200
    assert (await check.call("GET", "/readyz", "/readyz"))[0] == 200
    public_key = dedicated.new_user("ann")
    put = {"server_url": dedicated.url("ann"), "server_public_key": public_key}
    status, created = await check.call("PUT", user, "/admin/v1/users/ann", admin=True, json=put)
    assert status == 201
    dedicated.secrets["ann"] = [created["webhook_secret"]]
    assert (await check.call("PUT", user, "/admin/v1/users/ann", admin=True, json=put))[0] == 200
    bad = {"server_url": "ftp://x", "server_public_key": public_key}
    assert (await check.call("PUT", user, "/admin/v1/users/ann", admin=True, json=bad))[0] == 400
    assert (await check.call("PUT", user, "/admin/v1/users/ann", json=put))[0] == 401
    # A queued event and a delivered one, so the status and export show real queue and counters.
    await gateway.services.handoff("ann", [Item(Event("telegram.update", "telegram", {"update_id": 1}))])
    await dedicated.wait_for(lambda: len(dedicated.events("ann")) == 1)
    dedicated.mode["ann"] = "down"
    await gateway.services.handoff("ann", [Item(Event("telegram.update", "telegram", {"update_id": 2}))])
    await dedicated.wait_for(lambda: any(u == "ann" for u, _ in dedicated.attempts[1:]))
    status, body = await check.call("GET", user, "/admin/v1/users/ann", admin=True)
    assert status == 200
    assert body["queue"]["pending"] == 1
    assert body["counters"]["events_out"] == 1
    assert (await check.call("GET", user, "/admin/v1/users/nobody", admin=True))[0] == 404
    assert (await check.call("GET", user, "/admin/v1/users/bad%20id", admin=True))[0] == 400
    assert (await check.call("GET", user + "/export", "/admin/v1/users/ann/export", admin=True))[0] == 200
    rotate = user + "/credentials/rotate"
    status, rotated = await check.call("POST", rotate, "/admin/v1/users/ann/credentials/rotate", admin=True)
    assert status == 200
    auth = {"Authorization": f"Bearer {rotated['server_token']}"}
    assert (await check.call("POST", "/v1/ping", "/v1/ping", headers=auth))[0] == 200
    assert (await check.call("POST", "/v1/ping", "/v1/ping"))[0] == 401
    assert (await check.call("GET", "/v1/ai/usage", "/v1/ai/usage", headers=auth))[0] == 200
    assert (await check.call("GET", "/v1/connections", "/v1/connections", headers=auth))[0] == 200
    token = "/v1/connections/{provider}/token"
    assert (await check.call("POST", token, "/v1/connections/google/token", headers=auth, json={}))[0] == 404
    call = "/v1/telegram/{method}"
    assert (await check.call("POST", call, "/v1/telegram/sendMessage", headers=auth, json={"text": "x"}))[0] == 404
    assert (await check.call("POST", call, "/v1/telegram/logOut", headers=auth, json={}))[0] == 404
    webhook = "/telegram/webhook/{bot_id}"
    assert (await check.call("POST", webhook, "/telegram/webhook/123456789", json={"update_id": 1}))[0] == 401
    assert (await check.call("POST", webhook, "/telegram/webhook/42", json={"update_id": 1}))[0] == 404
    assert (await check.call("DELETE", user, "/admin/v1/users/ann", admin=True))[0] == 202
    status, erasing = await check.call("GET", user, "/admin/v1/users/ann", admin=True)
    assert status == 404 or erasing["status"] == "erasing"
    # Erasure is idempotent: an id that has no data is "erased" at once.
    assert (await check.call("DELETE", user, "/admin/v1/users/nobody", admin=True))[0] == 202
    status, _ = await check.call("PUT", user, "/admin/v1/users/ann", admin=True, json=put)
    assert status in (201, 409)
