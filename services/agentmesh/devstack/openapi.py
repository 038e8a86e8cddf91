"""The OpenAPI 3.1 description of the JSON API, generated from the descriptor set.

Envoy's gRPC-JSON transcoder serves every RPC with a ``google.api.http`` rule as JSON
over HTTP; this module writes what it serves, from the same descriptor set Envoy loads
(``make gen`` → ``gen/openapi/agentmesh.json``; docs/adr/0028):

- a path template's variable (``/v1/{name=sessions/*}``) becomes one path parameter per
  wildcard, named after its collection (``/v1/sessions/{session}``): the parameter is
  the id, the request field holds the whole name;
- a request's fields travel in the body (``body: "*"``, or the one field the rule
  names) and the rest in the query string (lowerCamelCase, ``filter.state`` for nested
  fields) — never both;
- responses are the output schemas of :mod:`openapi_schemas`; server streams are
  newline-delimited JSON (one message per line, labelled ``application/json`` as Envoy
  sends it), or server-sent events for a client
  that asks for ``text/event-stream``;
- errors are ``google.rpc.Status`` bodies under the HTTP code Envoy gives each gRPC
  code: the codes an RPC's comment lists, those its service's comment lists for every
  RPC, and Envoy's own refusals (400 malformed JSON or query, 404 no such path, 413
  body too large, 503/504 no healthy upstream or timeout);
- every operation needs a bearer token (JWT).

``python -m agentmesh.devstack.openapi DESCRIPTOR_SET OUTPUT``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Final

from google.api import http_pb2
from google.protobuf import descriptor_pb2

from agentmesh.core.names import ID_PATTERN, ID_RULE
from agentmesh.devstack.openapi_schemas import (
    FDP,
    JSON,
    Catalog,
    SchemaBuilder,
    http_rule,
    nullable,
    singular,
)

PACKAGE: Final = "agentmesh.v1"
STATUS: Final = "google.rpc.Status"

GRPC_TO_HTTP: Final = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
"""gRPC code → HTTP status, as Envoy's transcoder converts them (google/rpc/code.proto)."""

EDGE_ERRORS: Final = {
    400: "Envoy refused the request before any service saw it: malformed JSON, a field "
    "of the wrong type, an unknown field or query parameter.",
    401: "The bearer token is missing or invalid (`UNAUTHENTICATED`; `ErrorInfo.reason` says why).",
    503: "No healthy replica, or a dependency of the service is down (`UNAVAILABLE`): "
    "retry with backoff.",
    504: "The call ran out of time (`DEADLINE_EXCEEDED`).",
}
"""Errors any operation can meet, whatever its comment lists."""

_CODE_WORDS: Final = re.compile(r"\b(" + "|".join(GRPC_TO_HTTP) + r")\b")
_VARIABLE: Final = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")

STREAM_NOTE: Final = (
    "\n\n**Server stream.** The response is newline-delimited JSON: one message per "
    "line, each flushed as it happens. Send `Accept: text/event-stream` to get "
    "server-sent events instead (`data: {...}` and a blank line per message). An error "
    "before the first message is an ordinary error response; an error after it ends "
    "the stream."
)


def _verb_and_template(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None or kind == "custom":
        raise ValueError(f"unsupported HTTP rule {rule}")
    return kind, getattr(rule, kind)


def expand_template(template: str) -> tuple[str, list[tuple[str, str, str]]]:
    """(OpenAPI path, [(parameter, request field path, the name's pattern)]).

    ``/v1/{name=sessions/*}:undelete`` → ``/v1/sessions/{session}:undelete`` with
    ``("session", "name", "sessions/{session}")``.
    """
    params: list[tuple[str, str, str]] = []

    def replace(match: re.Match[str]) -> str:
        field_path, pattern = match.group(1), match.group(2) or "*"
        segments = pattern.split("/")
        out = []
        for i, segment in enumerate(segments):
            if segment == "*":
                if i == 0:
                    raise ValueError(f"{template}: a wildcard needs a collection before it")
                out.append("{" + singular(segments[i - 1]) + "}")
            elif "*" in segment:
                raise ValueError(f"{template}: `**` and partial wildcards are not supported")
            else:
                out.append(segment)
        shape = "/".join(out)
        for name in re.findall(r"\{([a-z]+)\}", shape):
            params.append((name, field_path, shape))
        return shape

    path = _VARIABLE.sub(replace, template)
    names = [p[0] for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"{template}: two path parameters would share a name")
    return path, params


def error_codes(*sections: str) -> dict[int, list[str]]:
    """HTTP status → the gRPC codes named in the sections (see :func:`error_section`)."""
    codes: dict[int, list[str]] = {}
    for section in sections:
        for code in _CODE_WORDS.findall(section):
            listed = codes.setdefault(GRPC_TO_HTTP[code], [])
            if code not in listed:
                listed.append(code)
    return codes


def error_section(comment: str, siblings: dict[str, str]) -> str:
    """The part of an RPC's comment that lists its errors: from `Errors` to the end,
    with `as <OtherRpc>` replaced by that RPC's own list."""
    start = comment.find("Errors")
    if start < 0:
        return ""
    section = comment[start:]
    for other in re.findall(r"\bas ([A-Z][A-Za-z]+)\b", section):
        if other in siblings:
            section += " " + error_section(siblings[other], {})
    return section


def service_errors(comment: str) -> str:
    """The sentence of a service's comment naming the errors every RPC may return."""
    found = re.search(r"Every RPC may (?:also )?return ([^.]*)", comment)
    return found.group(1) if found else ""


class Generator:
    """One OpenAPI document from a descriptor set."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.schemas = SchemaBuilder(catalog, PACKAGE)
        self.paths: dict[str, JSON] = {}
        self.tags: list[JSON] = []

    def build(self) -> JSON:
        for file in self.catalog.files:
            if file.package != PACKAGE:
                continue
            for service in file.service:
                self._service(service)
        self.schemas.ref(STATUS, output=True)
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "agentmesh API",
                "version": "v1",
                "summary": "Conductor, Agent, Job and Memory services as JSON over HTTP.",
                "description": (
                    "The JSON face of the `agentmesh.v1` gRPC contract, served by Envoy's "
                    "gRPC-JSON transcoder on the same port as native gRPC. Generated "
                    "from the protos: the proto comments are the reference. Names are "
                    "lowerCamelCase, enums are their names, 64-bit integers are strings, "
                    "fields holding their default are printed. In a request, a field "
                    "the message does not have is ignored (the transcoder drops it), and "
                    "a single value stands for a list of one. Every error is a "
                    "`google.rpc.Status` body, with `ErrorInfo.reason` to branch on and "
                    "`RequestInfo.requestId` to quote."
                ),
                "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            },
            "servers": [{"url": "/", "description": "This mesh's Envoy (same origin)."}],
            "security": [{"bearerAuth": []}],
            "tags": self.tags,
            "paths": dict(sorted(self.paths.items())),
            "components": {
                "securitySchemes": {
                    "bearerAuth": {
                        "type": "http",
                        "scheme": "bearer",
                        "bearerFormat": "JWT",
                        "description": (
                            "A JWT (HS256 or RS256) with `iss` and `aud` `agentmesh` and a "
                            "`tenant` claim; every call is scoped to that tenant. Under "
                            "`make dev`: `.venv/bin/agentmesh token --tenant acme`."
                        ),
                    }
                },
                "schemas": dict(sorted(self.schemas.schemas.items())),
            },
        }

    def _service(self, service: descriptor_pb2.ServiceDescriptorProto) -> None:
        full = f"{PACKAGE}.{service.name}"
        comment = self.catalog.comments.get(("service", full), "")
        comments = {
            m.name: self.catalog.comments.get(("method", full, m.name), "") for m in service.method
        }
        added = False
        for method in service.method:
            rule = http_rule(method)
            if rule is None:
                continue
            errors = error_codes(
                error_section(comments[method.name], comments), service_errors(comment)
            )
            for binding in [rule, *rule.additional_bindings]:
                self._operation(service.name, method, binding, errors)
                added = True
        if added:
            self.tags.append({"name": service.name, "description": comment})

    def _operation(
        self,
        service: str,
        method: descriptor_pb2.MethodDescriptorProto,
        rule: http_pb2.HttpRule,
        errors: dict[int, list[str]],
    ) -> None:
        verb, template = _verb_and_template(rule)
        path, path_params = expand_template(template)
        request = method.input_type.lstrip(".")
        response = method.output_type.lstrip(".")
        comment = self.catalog.comments.get(("method", f"{PACKAGE}.{service}", method.name), "")
        streaming = method.server_streaming
        if method.client_streaming:
            raise ValueError(f"{service}.{method.name}: client streams have no JSON binding")

        # Fields the path carries: never in the body or the query string too (the
        # transcoder refuses a body whose `name` differs from the path's).
        in_path = {p[1] for p in path_params}
        parameters: list[JSON] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": (
                    f"The {name}'s id: the request's `{field_path}` is `{shape}`. An id {ID_RULE}."
                ),
                "schema": {"type": "string", "pattern": ID_PATTERN.pattern},
            }
            for name, field_path, shape in path_params
        ]
        operation: JSON = {
            "tags": [service],
            "operationId": f"{service}_{method.name}",
            "summary": _summary(comment, method.name),
            "description": (comment or method.name)
            + f"\n\ngRPC: `/{PACKAGE}.{service}/{method.name}`"
            + (STREAM_NOTE if streaming else ""),
        }
        body_field = rule.body
        if body_field == "*":
            schema = self.schemas.message_schema(
                request, output=False, leave_out=frozenset(in_path)
            )
            operation["requestBody"] = _body(
                schema if in_path else self.schemas.ref(request, output=False), schema
            )
        else:
            if body_field:
                fld = _field(self.catalog.message(request), body_field)
                if fld.type != FDP.TYPE_MESSAGE:
                    raise ValueError(f"{method.name}: body field {body_field} is not a message")
                inner = {p.split(".", 1)[1] for p in in_path if p.startswith(body_field + ".")}
                schema = self.schemas.message_schema(
                    fld.type_name.lstrip("."), output=False, leave_out=frozenset(inner)
                )
                operation["requestBody"] = _body(
                    schema if inner else self.schemas.ref(fld.type_name, output=False), schema
                )
            taken = frozenset(
                {p.split(".")[0] for p in in_path} | ({body_field} if body_field else set())
            )
            for name, fld, owner in self.schemas.query_fields(request, taken):
                parameters.append(self._query_parameter(name, fld, owner))
        if parameters:
            operation["parameters"] = parameters
        operation["responses"] = self._responses(response, streaming, errors, bool(body_field))
        self.paths.setdefault(path, {})[verb] = operation

    def _query_parameter(
        self, name: str, fld: descriptor_pb2.FieldDescriptorProto, owner: str
    ) -> JSON:
        schema = self.schemas.field_schema(owner, fld, output=False, in_query=True)
        description = schema.pop("description", None)
        parameter: JSON = {"name": name, "in": "query", "schema": schema}
        if description:
            parameter["description"] = description
        if fld.label == FDP.LABEL_REPEATED:
            parameter["style"] = "form"
            parameter["explode"] = True
        return parameter

    def _responses(
        self, response: str, streaming: bool, codes: dict[int, list[str]], has_body: bool
    ) -> JSON:
        schema = self.schemas.ref(response, output=True)
        if streaming:
            # Envoy labels a newline-delimited stream application/json, as any body.
            content: JSON = {
                "application/json": {"schema": schema},
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "`data: <message as JSON>` and a blank line per message.",
                    }
                },
            }
            description = (
                "A stream of messages: one JSON object per line (newline-delimited JSON, "
                "labelled `application/json`), or server-sent events."
            )
        else:
            content = {"application/json": {"schema": schema}}
            description = "OK"
        out: JSON = {"200": {"description": description, "content": content}}
        errors = {status: list(names) for status, names in codes.items()}
        for status in EDGE_ERRORS:
            errors.setdefault(status, [])
        errors.setdefault(404, [])  # no such path (and, for names, no such resource)
        if has_body:
            errors.setdefault(413, [])
        status_ref = self.schemas.ref(STATUS, output=True)
        for status in sorted(errors):
            names = errors[status]
            text = ", ".join(f"`{n}`" for n in names) if names else ""
            edge = EDGE_ERRORS.get(status) or {
                404: "No such path (Envoy), or the resource does not exist for this tenant.",
                413: "The request body is over the size limit (Envoy).",
            }.get(status, "")
            parts = [p for p in (text and f"gRPC {text}.", edge) if p]
            out[str(status)] = {
                "description": " ".join(parts) or "Error.",
                "headers": {
                    "grpc-status": {
                        "description": "The numeric gRPC code of the error.",
                        "schema": {"type": "string"},
                    }
                },
                "content": {"application/json": {"schema": status_ref}},
            }
        return out


def _body(schema: JSON, resolved: JSON) -> JSON:
    """A JSON request body; required only when the message has required fields (the
    transcoder takes a missing body, or `null`, as an empty message)."""
    required = bool(resolved.get("required"))
    return {
        "required": required,
        "content": {"application/json": {"schema": schema if required else nullable(schema)}},
    }


def _field(
    message: descriptor_pb2.DescriptorProto, name: str
) -> descriptor_pb2.FieldDescriptorProto:
    for fld in message.field:
        if fld.name == name:
            return fld
    raise ValueError(f"{message.name} has no field {name}")


def _summary(comment: str, fallback: str) -> str:
    first = comment.split("\n\n", 1)[0].replace("\n", " ").strip()
    sentence = re.split(r"(?<=[.:;])\s", first, maxsplit=1)[0].rstrip(".:;")
    return sentence or fallback


def generate(descriptor_set: bytes) -> JSON:
    """The OpenAPI document of every HTTP-bound RPC of ``agentmesh.v1``."""
    return Generator(Catalog.load(descriptor_set)).build()


def render(document: JSON) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("descriptor_set", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    document = generate(args.descriptor_set.read_bytes())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
