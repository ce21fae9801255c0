"""The OpenAPI document: valid, served without a key, and in step with the code it describes."""

from __future__ import annotations

import inspect

from openapi_spec_validator import validate
from starlette.routing import Route

from broker.errors import ALL_FAILURES
from broker.model import ConsoleKind, LinkMode
from broker.sources.consoles import STATES
from broker.web import app as app_module
from broker.web.openapi import OPENAPI, SCHEMAS
from unit_support import AUTH

# Routes that are pages and sockets for browsers, not REST calls.
NOT_REST = {"/console", "/console/{uuid}/", "/console/{uuid}/terminal", "/static/{name}"}


def test_the_document_is_valid_openapi() -> None:
    validate(OPENAPI)


def test_it_is_served_without_an_api_key(api) -> None:
    response = api.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json() == OPENAPI
    assert api.client.get("/api/v1/openapi.json", headers=AUTH).json() == OPENAPI


def test_every_rest_route_is_described_with_its_methods(api) -> None:
    methods: dict[str, set[str]] = {}
    for route in api.client.app.routes:
        if isinstance(route, Route) and route.path not in NOT_REST:
            methods.setdefault(route.path, set()).update(route.methods or ())
    assert set(methods) == set(OPENAPI["paths"])
    for path, allowed in methods.items():
        described = {m.upper() for m in OPENAPI["paths"][path] if m != "parameters"}
        assert described == allowed - {"HEAD"}, path  # Starlette adds HEAD to every GET


def test_the_console_request_fields_are_the_ones_the_broker_reads() -> None:
    source = inspect.getsource(app_module.ConsoleRequest.parse)
    vnc, serial = SCHEMAS["VncConsoleRequest"]["properties"], SCHEMAS["SerialConsoleRequest"]["properties"]
    fields = set(vnc) | set(serial)
    assert fields == {"ttl", "graphics", "kind", "console", "take_over", "mode", "user", "max_session_length"}
    for name in fields:
        assert f'"{name}"' in source
    assert set(vnc) ^ set(serial) == {"graphics", "console", "take_over"}  # one kind's fields only
    assert vnc["user"]["maxLength"] == app_module.MAX_USER_LABEL


def test_enums_match_the_model() -> None:
    kinds = SCHEMAS["VncConsoleRequest"]["properties"]["kind"]["enum"]
    kinds += SCHEMAS["SerialConsoleRequest"]["properties"]["kind"]["enum"]
    assert kinds == [k.value for k in ConsoleKind]
    assert SCHEMAS["VncConsoleRequest"]["properties"]["mode"]["enum"] == [m.value for m in LinkMode]
    assert SCHEMAS["ConsoleLink"]["properties"]["mode"]["enum"] == [m.value for m in LinkMode]
    assert set(SCHEMAS["Domain"]["properties"]["state"]["enum"]) == {*STATES.values(), "unknown"}


def test_every_error_code_is_listed_and_every_answer_names_its_codes() -> None:
    codes = set(SCHEMAS["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert {f.slug for f in ALL_FAILURES} <= codes
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and path != "/healthz":
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                    assert "`error.code`:" in answer["description"], (path, method, status)


def test_calls_behind_the_key_say_401_and_public_ones_say_no_security() -> None:
    public = {"/healthz", "/api/v1/openapi.json"}
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path in public:
                assert operation["security"] == []
            else:
                assert "security" not in operation and "401" in operation["responses"], path
