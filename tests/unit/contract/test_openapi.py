"""The OpenAPI description generated from the descriptor set (agentmesh.devstack.openapi).

Read from the committed descriptor set, so these pin what the generator makes of the
real contract: the shapes Envoy's transcoder speaks, the path parameters, the errors.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate

from agentmesh.devstack import paths
from agentmesh.devstack.openapi import (
    error_codes,
    error_section,
    expand_template,
    generate,
    render,
    service_errors,
)
from agentmesh.devstack.openapi_schemas import http_rule, nullable, singular

JSON = dict[str, Any]


@cache
def _spec() -> JSON:
    return generate(paths.descriptor_set().read_bytes())


@pytest.fixture
def spec() -> JSON:
    return _spec()


def _unwrap(schema: JSON) -> JSON:
    """The non-null branch of a nullable schema."""
    if "anyOf" in schema:
        (inner,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return _unwrap(inner)
    return schema


def _schema(spec: JSON, name: str) -> JSON:
    schema: JSON = spec["components"]["schemas"][name]
    return schema


def test_the_spec_is_valid_openapi_3_1(spec: JSON) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on any violation of the 3.1 schema


def test_the_committed_spec_is_what_the_generator_writes(spec: JSON) -> None:
    assert paths.openapi_description().read_text() == render(spec)


def test_every_http_bound_rpc_is_an_operation(spec: JSON) -> None:
    fds = descriptor_pb2.FileDescriptorSet.FromString(paths.descriptor_set().read_bytes())
    bound = {
        f"{svc.name}_{m.name}"
        for f in fds.file
        if f.package == "agentmesh.v1"
        for svc in f.service
        for m in svc.method
        if http_rule(m) is not None
    }
    operations = {op["operationId"] for item in spec["paths"].values() for op in item.values()}
    assert bound == operations
    assert len(operations) >= 40


def test_path_templates_become_one_parameter_per_wildcard() -> None:
    assert expand_template("/v1/{name=sessions/*}:undelete") == (
        "/v1/sessions/{session}:undelete",
        [("session", "name", "sessions/{session}")],
    )
    assert expand_template("/v1/{working_memory.name=sessions/*/workingMemory}") == (
        "/v1/sessions/{session}/workingMemory",
        [("session", "working_memory.name", "sessions/{session}/workingMemory")],
    )
    assert expand_template("/v1/memories:search") == ("/v1/memories:search", [])
    with pytest.raises(ValueError, match="collection"):
        expand_template("/v1/{name=*}")
    assert singular("memories") == "memory"
    assert singular("jobs") == "job"


def test_a_path_parameter_is_an_id_and_says_which_field_holds_the_name(spec: JSON) -> None:
    op = spec["paths"]["/v1/jobs/{job}:cancel"]["post"]
    (param,) = [p for p in op["parameters"] if p["in"] == "path"]
    assert param["name"] == "job"
    assert param["required"] is True
    assert "`name` is `jobs/{job}`" in param["description"]
    assert re.match(param["schema"]["pattern"], "j-1")
    assert not re.match(param["schema"]["pattern"], "Bad_Id")


def test_a_field_the_path_carries_is_not_in_the_body(spec: JSON) -> None:
    # UpdateSession: body "session", path {session.name=sessions/*}: a `name` in the body
    # would conflict with the path (the transcoder refuses it), so it is not offered.
    body = spec["paths"]["/v1/sessions/{session}"]["patch"]["requestBody"]
    schema = _unwrap(body["content"]["application/json"]["schema"])
    assert "null" in schema["type"]  # no required field: `null` is an empty message
    assert "name" not in schema["properties"]
    assert "displayName" in schema["properties"]
    # UpdateWorkingMemory: body "*", path {working_memory.name=…}.
    body = spec["paths"]["/v1/sessions/{session}/workingMemory"]["patch"]["requestBody"]
    inner = body["content"]["application/json"]["schema"]["properties"]["workingMemory"]
    assert "name" not in _unwrap(inner)["properties"]


def test_get_requests_take_their_fields_from_the_query_string(spec: JSON) -> None:
    op = spec["paths"]["/v1/sessions/{session}/messages"]["get"]
    query = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
    assert {"pageSize", "pageToken", "afterSequence", "descending"} <= set(query)
    assert query["pageSize"]["schema"]["minimum"] == 0
    assert "requestBody" not in op


def test_responses_are_printed_as_the_transcoder_prints_them(spec: JSON) -> None:
    session = _schema(spec, "Session")
    props = session["properties"]
    # 64-bit integers are strings; fields without presence are always printed.
    assert props["messageCount"] == {
        **props["messageCount"],
        "type": "string",
        "format": "int64",
    }
    assert {"name", "displayName", "labels", "messageCount", "etag"} <= set(session["required"])
    # Message fields (a Timestamp) are printed only when set.
    assert "createTime" not in session["required"]
    assert props["createTime"]["format"] == "date-time"
    assert session["additionalProperties"] is False
    # Enums are their names.
    kind = _schema(spec, "Memory")["properties"]["kind"]
    assert kind["type"] == "string"
    assert "MEMORY_KIND_SEMANTIC" in kind["enum"]
    # Proto comments become descriptions.
    assert "conversation" in session["description"]


def test_requests_accept_what_proto3_json_accepts(spec: JSON) -> None:
    memory_input = _schema(spec, "MemoryInput")
    props = memory_input["properties"]
    assert _unwrap(props["kind"])["oneOf"][1]["type"] == "integer"  # enum numbers too
    assert "null" in props["content"]["type"]  # null is the default
    # A list, or one value standing for a list of one.
    assert props["embedding"]["anyOf"][0]["anyOf"][0]["type"] == "array"
    assert props["embedding"]["anyOf"][0]["anyOf"][1]["type"] == "number"
    assert "additionalProperties" not in memory_input  # unknown fields are dropped
    assert "required" not in _schema(spec, "SessionInput")


def test_oneof_members_exclude_each_other(spec: JSON) -> None:
    search = _schema(spec, "SearchMemoriesRequestInput")
    assert {"not": {"required": ["text", "vector"]}} in search["allOf"]


def test_streams_are_newline_delimited_json_or_server_sent_events(spec: JSON) -> None:
    op = spec["paths"]["/v1/sessions/{session}:converse"]["post"]
    content = op["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ConverseEvent"}
    assert "text/event-stream" in content
    assert "Server stream" in op["description"]


def test_errors_are_status_bodies_under_their_http_codes(spec: JSON) -> None:
    op = spec["paths"]["/v1/sessions/{session}:converse"]["post"]
    responses = op["responses"]
    # Listed by the RPC's comment (ABORTED → 409, RESOURCE_EXHAUSTED → 429, …), by the
    # service's (UNAUTHENTICATED, UNAVAILABLE), and Envoy's own refusals.
    assert {"400", "401", "404", "409", "413", "429", "503", "504"} <= set(responses)
    assert "`ABORTED`" in responses["409"]["description"]
    status = {"$ref": "#/components/schemas/google.rpc.Status"}
    assert all(
        r["content"]["application/json"]["schema"] == status
        for code, r in responses.items()
        if code != "200"
    )
    get = spec["paths"]["/v1/agents"]["get"]["responses"]
    assert "409" not in get
    assert "429" not in get


def test_error_sections_are_read_from_the_comments() -> None:
    siblings = {"InvokeAgent": "Runs it. Errors: NOT_FOUND (agent), RESOURCE_EXHAUSTED."}
    section = error_section("Streams it. Errors: as InvokeAgent.", siblings)
    assert error_codes(section) == {404: ["NOT_FOUND"], 429: ["RESOURCE_EXHAUSTED"]}
    # Codes before "Errors" (a job state named CANCELLED) are not errors.
    assert error_codes(error_section("A job ends CANCELLED. Errors: NOT_FOUND.", {})) == {
        404: ["NOT_FOUND"]
    }
    text = "NOT_FOUND, never PERMISSION_DENIED. Every RPC may also return UNAUTHENTICATED."
    assert error_codes(service_errors(text)) == {401: ["UNAUTHENTICATED"]}


def test_every_operation_needs_a_bearer_token(spec: JSON) -> None:
    assert spec["security"] == [{"bearerAuth": []}]
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")


def test_nullable_adds_null_without_losing_the_schema() -> None:
    assert nullable({"type": "string"}) == {"type": ["string", "null"]}
    assert nullable({"type": "string", "enum": ["A"]}) == {
        "type": ["string", "null"],
        "enum": ["A", None],
    }
    ref = {"$ref": "#/components/schemas/X"}
    assert nullable(ref) == {"anyOf": [ref, {"type": "null"}]}


def test_the_spec_renders_deterministically(spec: JSON) -> None:
    assert render(spec) == render(generate(paths.descriptor_set().read_bytes()))
    assert json.loads(render(spec)) == spec
