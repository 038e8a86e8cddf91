"""JSON Schemas of protobuf messages as Envoy's gRPC-JSON transcoder speaks them.

The transcoder prints canonical proto3 JSON with the options of envoy/envoy.yaml.j2:
lowerCamelCase names, enums as their names, every field without presence printed even
when it holds its default (``always_print_primitive_fields``), 64-bit integers as
strings, and the well-known types in their JSON forms. A message therefore has two
schemas when they differ:

- the **output** schema (what a response carries): every field without presence is
  ``required``, OUTPUT_ONLY fields are ``readOnly``, nothing else appears
  (``additionalProperties: false``);
- the **input** schema (what a request may carry, named ``<Message>Input``): nothing is
  required but what the contract marks REQUIRED, 64-bit integers may be numbers or
  strings, enums may be names or numbers.

Used by :mod:`agentmesh.devstack.openapi`; the proto comments become descriptions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

FDP: Final = descriptor_pb2.FieldDescriptorProto
JSON = dict[str, Any]

INT32_RANGE: Final = {"minimum": -(2**31), "maximum": 2**31 - 1}
UINT32_RANGE: Final = {"minimum": 0, "maximum": 2**32 - 1}
INT64_RANGE: Final = {"minimum": -(2**63), "maximum": 2**63 - 1}
UINT64_RANGE: Final = {"minimum": 0, "maximum": 2**64 - 1}

_INT64_TYPES: Final = {
    FDP.TYPE_INT64: (INT64_RANGE, "^-?[0-9]+$", "int64"),
    FDP.TYPE_SINT64: (INT64_RANGE, "^-?[0-9]+$", "int64"),
    FDP.TYPE_SFIXED64: (INT64_RANGE, "^-?[0-9]+$", "int64"),
    FDP.TYPE_UINT64: (UINT64_RANGE, "^[0-9]+$", "uint64"),
    FDP.TYPE_FIXED64: (UINT64_RANGE, "^[0-9]+$", "uint64"),
}
_INT32_TYPES: Final = {
    FDP.TYPE_INT32: (INT32_RANGE, "int32"),
    FDP.TYPE_SINT32: (INT32_RANGE, "int32"),
    FDP.TYPE_SFIXED32: (INT32_RANGE, "int32"),
    FDP.TYPE_UINT32: (UINT32_RANGE, "uint32"),
    FDP.TYPE_FIXED32: (UINT32_RANGE, "uint32"),
}

_SCALARS: Final[Mapping[int, JSON]] = {
    FDP.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FDP.TYPE_FLOAT: {"type": "number", "format": "float"},
    FDP.TYPE_BOOL: {"type": "boolean"},
    FDP.TYPE_STRING: {"type": "string"},
    FDP.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

WELL_KNOWN: Final[Mapping[str, JSON]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})$",
        "description": "RFC 3339 time in UTC, e.g. `2026-12-03T10:15:30.123Z`.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated lowerCamelCase field paths, e.g. `title,labels`.",
    },
    "google.protobuf.Struct": {
        "type": "object",
        "additionalProperties": True,
        "description": "Any JSON object.",
    },
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
        "description": "A message of the type named by `@type`, its fields beside it.",
    },
}
"""The well-known types in their proto3 JSON forms (wrappers are not used here)."""


def nullable(schema: JSON) -> JSON:
    """The schema, or JSON null: proto3 JSON reads null as the field's default."""
    kind = schema.get("type")
    if kind is not None and not ({"$ref", "anyOf", "oneOf", "allOf"} & schema.keys()):
        kinds = kind if isinstance(kind, list) else [kind]
        out = {**schema, "type": [*kinds, "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def singular(collection: str) -> str:
    """`memories` → `memory`, `sessions` → `session` (the collections of our names)."""
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    return collection[:-1] if collection.endswith("s") else collection


def clean_comment(text: str) -> str:
    """A proto comment as Markdown: the one-space indent of `// ` lines removed."""
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip()


@dataclass
class Catalog:
    """Every message and enum of a descriptor set, by full name, with its comments."""

    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    comments: dict[tuple[str, ...], str] = field(default_factory=dict)
    """(kind, full name[, member]) → comment; kinds `message`, `field`, `enum`, `value`,
    `service`, `method`."""
    files: list[descriptor_pb2.FileDescriptorProto] = field(default_factory=list)

    @classmethod
    def load(cls, descriptor_set: bytes) -> Catalog:
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file
        catalog = cls(files=list(files))
        for file in files:
            catalog._add_file(file)
        return catalog

    def _add_file(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        located = {
            tuple(loc.path): loc.leading_comments
            for loc in file.source_code_info.location
            if loc.leading_comments
        }
        prefix = file.package
        for i, message in enumerate(file.message_type):
            self._add_message(prefix, message, (4, i), located)
        for i, enum in enumerate(file.enum_type):
            self._add_enum(prefix, enum, (5, i), located)
        for i, service in enumerate(file.service):
            name = f"{prefix}.{service.name}"
            self._comment(("service", name), located.get((6, i)))
            for j, method in enumerate(service.method):
                self._comment(("method", name, method.name), located.get((6, i, 2, j)))

    def _comment(self, key: tuple[str, ...], text: str | None) -> None:
        if text:
            self.comments[key] = clean_comment(text)

    def _add_message(
        self,
        prefix: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        located: Mapping[tuple[int, ...], str],
    ) -> None:
        name = f"{prefix}.{message.name}"
        self.messages[name] = message
        self._comment(("message", name), located.get(path))
        for j, fld in enumerate(message.field):
            self._comment(("field", name, fld.name), located.get((*path, 2, j)))
        for j, nested in enumerate(message.nested_type):
            self._add_message(name, nested, (*path, 3, j), located)
        for j, enum in enumerate(message.enum_type):
            self._add_enum(name, enum, (*path, 4, j), located)

    def _add_enum(
        self,
        prefix: str,
        enum: descriptor_pb2.EnumDescriptorProto,
        path: tuple[int, ...],
        located: Mapping[tuple[int, ...], str],
    ) -> None:
        name = f"{prefix}.{enum.name}"
        self.enums[name] = enum
        self._comment(("enum", name), located.get(path))
        for j, value in enumerate(enum.value):
            self._comment(("value", name, value.name), located.get((*path, 2, j)))

    def message(self, type_name: str) -> descriptor_pb2.DescriptorProto:
        return self.messages[type_name.lstrip(".")]


def message_fields(
    message: descriptor_pb2.DescriptorProto,
) -> dict[str, descriptor_pb2.FieldDescriptorProto]:
    return {f.name: f for f in message.field}


def behaviors(fld: descriptor_pb2.FieldDescriptorProto) -> set[str]:
    """The field's google.api.field_behavior values by name (REQUIRED, OUTPUT_ONLY…)."""
    # The extension accessors are untyped in the protobuf stubs.
    options: Any = fld.options
    values: list[int] = list(options.Extensions[field_behavior_pb2.field_behavior])
    return {field_behavior_pb2.FieldBehavior.Name(v) for v in values}


def http_rule(method: descriptor_pb2.MethodDescriptorProto) -> http_pb2.HttpRule | None:
    """The method's google.api.http rule, if it has one."""
    options: Any = method.options
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def has_presence(fld: descriptor_pb2.FieldDescriptorProto) -> bool:
    """Whether the transcoder leaves the field out when unset: messages, oneof members
    (proto3 `optional` included); everything else is always printed."""
    if fld.label == FDP.LABEL_REPEATED:
        return False
    return fld.type == FDP.TYPE_MESSAGE or fld.HasField("oneof_index")


class SchemaBuilder:
    """Builds ``components.schemas``: output and input schemas of every message a path
    reaches, named by :meth:`name` (``Session``, ``SessionInput``, ``google.rpc.Status``)."""

    def __init__(self, catalog: Catalog, package: str) -> None:
        self.catalog = catalog
        self.package = package
        self.schemas: dict[str, JSON] = {}
        self._building: set[str] = set()

    def name(self, full_name: str, *, output: bool) -> str:
        short = full_name.removeprefix(self.package + ".")
        return short if output or not self._differs(full_name) else f"{short}Input"

    def _differs(self, full_name: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether the message's input schema differs from its output schema."""
        if full_name in WELL_KNOWN or full_name in seen:
            return False
        for fld in self.catalog.message(full_name).field:
            if not has_presence(fld) or "OUTPUT_ONLY" in behaviors(fld):
                return True
            if fld.type in _INT64_TYPES or fld.type == FDP.TYPE_ENUM:
                return True
            if fld.type == FDP.TYPE_MESSAGE and self._differs(
                fld.type_name.lstrip("."), seen | {full_name}
            ):
                return True
        return False

    def ref(self, full_name: str, *, output: bool) -> JSON:
        """A ``$ref`` to the message's schema, building it (and what it reaches) once."""
        full_name = full_name.lstrip(".")
        if full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[full_name])
        name = self.name(full_name, output=output)
        if name not in self.schemas and name not in self._building:
            self._building.add(name)
            self.schemas[name] = self.message_schema(full_name, output=output)
            self._building.discard(name)
        return {"$ref": f"#/components/schemas/{name}"}

    def message_schema(
        self, full_name: str, *, output: bool, leave_out: frozenset[str] = frozenset()
    ) -> JSON:
        """The object schema of a message; ``leave_out`` names fields (proto names) that
        travel elsewhere (the path, the query string), ``a.b`` a field of a message field
        (whose schema is then written inline without it)."""
        nested_leave_out: dict[str, set[str]] = {}
        for path in leave_out:
            if "." in path:
                outer, inner = path.split(".", 1)
                nested_leave_out.setdefault(outer, set()).add(inner)
        message = self.catalog.message(full_name)
        if message.options.map_entry:
            raise ValueError(f"{full_name} is a map entry, not a schema of its own")
        properties: JSON = {}
        required: list[str] = []
        for fld in message.field:
            if fld.name in leave_out:
                continue
            properties[fld.json_name] = self.field_schema(full_name, fld, output=output)
            wanted = behaviors(fld)
            if (output and not has_presence(fld)) or (
                not output and "REQUIRED" in wanted and "OUTPUT_ONLY" not in wanted
            ):
                required.append(fld.json_name)
        for outer_name, inner_names in nested_leave_out.items():
            if outer_name in message_fields(message):
                fld = message_fields(message)[outer_name]
                nested = self.message_schema(
                    fld.type_name.lstrip("."), output=output, leave_out=frozenset(inner_names)
                )
                properties[fld.json_name] = self._annotate(full_name, fld, nested)
        schema: JSON = {"type": "object"}
        description = self.catalog.comments.get(("message", full_name))
        if description:
            schema["description"] = description
        schema["properties"] = properties
        if required:
            schema["required"] = required
        exclusive = self._oneof_pairs(message, properties)
        if exclusive:
            # At most one member of a oneof: the transcoder refuses a second (400).
            schema["allOf"] = [{"not": {"required": list(pair)}} for pair in exclusive]
        if output:
            # A response carries exactly these fields. A request may carry others: the
            # transcoder drops unknown fields without a word (it has no option to
            # refuse them), so they are allowed and ignored.
            schema["additionalProperties"] = False
        return schema

    @staticmethod
    def _oneof_pairs(
        message: descriptor_pb2.DescriptorProto, properties: JSON
    ) -> list[tuple[str, str]]:
        """Pairs of JSON names that belong to one (real, not `optional`) oneof."""
        groups: dict[int, list[str]] = {}
        for fld in message.field:
            real = fld.HasField("oneof_index") and not fld.proto3_optional
            if real and fld.json_name in properties:
                groups.setdefault(fld.oneof_index, []).append(fld.json_name)
        return [
            (a, b) for names in groups.values() for i, a in enumerate(names) for b in names[i + 1 :]
        ]

    def field_schema(
        self,
        owner: str,
        fld: descriptor_pb2.FieldDescriptorProto,
        *,
        output: bool,
        in_query: bool = False,
    ) -> JSON:
        if fld.label == FDP.LABEL_REPEATED and fld.type == FDP.TYPE_MESSAGE:
            entry = self.catalog.message(fld.type_name)
            if entry.options.map_entry:
                value = next(f for f in entry.field if f.name == "value")
                schema: JSON = {
                    "type": "object",
                    "additionalProperties": self._single(value, output=output),
                }
            else:
                schema = self._list(fld, output=output, single=not (output or in_query))
        elif fld.label == FDP.LABEL_REPEATED:
            schema = self._list(fld, output=output, single=not (output or in_query))
        else:
            schema = self._single(fld, output=output)
        if not output and not in_query:
            schema = nullable(schema)
        return self._annotate(owner, fld, schema)

    def _annotate(self, owner: str, fld: descriptor_pb2.FieldDescriptorProto, schema: JSON) -> JSON:
        notes = []
        description = self.catalog.comments.get(("field", owner, fld.name))
        if description:
            notes.append(description)
        wanted = behaviors(fld)
        marks = [b for b in ("REQUIRED", "OUTPUT_ONLY", "IMMUTABLE", "INPUT_ONLY") if b in wanted]
        if marks:
            notes.append("Field behavior: " + ", ".join(f"`{m}`" for m in marks) + ".")
        if "$ref" in schema:
            # 3.1 allows siblings of a $ref: the field's own description goes beside it.
            schema = {"$ref": schema["$ref"]}
        if notes:
            schema["description"] = "\n\n".join(notes)
        if "OUTPUT_ONLY" in wanted:
            schema["readOnly"] = True
        # INPUT_ONLY is not `writeOnly`: the transcoder still prints the field in
        # responses (empty, as always_print_primitive_fields prints every list).
        if fld.name == "page_size" and fld.type in _INT32_TYPES:
            schema["minimum"] = 0  # AIP-158: a negative page size is INVALID_ARGUMENT
        return schema

    def _list(
        self, fld: descriptor_pb2.FieldDescriptorProto, *, output: bool, single: bool
    ) -> JSON:
        item = self._single(fld, output=output)
        if not single:
            return {"type": "array", "items": item}
        # In a JSON body the transcoder takes a single value as a list of one.
        return {"anyOf": [{"type": "array", "items": item}, item]}

    def _single(self, fld: descriptor_pb2.FieldDescriptorProto, *, output: bool) -> JSON:
        """The schema of one value of the field (an element, for repeated fields)."""
        kind = fld.type
        if kind == FDP.TYPE_MESSAGE:
            return self.ref(fld.type_name, output=output)
        if kind == FDP.TYPE_ENUM:
            return self.enum_schema(fld.type_name.lstrip("."), output=output)
        if kind in _INT64_TYPES:
            bounds, pattern, fmt = _INT64_TYPES[kind]
            if output:
                return {"type": "string", "format": fmt, "pattern": pattern}
            return {"type": ["string", "integer"], "format": fmt, "pattern": pattern, **bounds}
        if kind in _INT32_TYPES:
            bounds32, fmt = _INT32_TYPES[kind]
            return {"type": "integer", "format": fmt, **bounds32}
        if kind in _SCALARS:
            return dict(_SCALARS[kind])
        raise ValueError(f"unsupported field type {kind} of {fld.name}")

    def enum_schema(self, full_name: str, *, output: bool) -> JSON:
        enum = self.catalog.enums[full_name]
        names = [v.name for v in enum.value]
        lines = []
        for value in enum.value:
            text = self.catalog.comments.get(("value", full_name, value.name), "")
            first = text.split("\n\n", 1)[0].replace("\n", " ")
            lines.append(f"- `{value.name}`: {first}" if first else f"- `{value.name}`")
        description = self.catalog.comments.get(("enum", full_name), "")
        description = (description + "\n\n" if description else "") + "\n".join(lines)
        if output:
            return {"type": "string", "enum": names, "description": description}
        numbers = [v.number for v in enum.value]
        return {
            "description": description,
            "oneOf": [{"type": "string", "enum": names}, {"type": "integer", "enum": numbers}],
        }

    def query_fields(
        self, full_name: str, leave_out: frozenset[str], prefix: str = "", depth: int = 0
    ) -> Iterator[tuple[str, descriptor_pb2.FieldDescriptorProto, str]]:
        """(query name, field, owner) of every leaf a query string can set: scalars,
        enums and repeated scalars, through message fields (``filter.state``)."""
        for fld in self.catalog.message(full_name).field:
            if not prefix and fld.name in leave_out:
                continue
            if "OUTPUT_ONLY" in behaviors(fld):
                continue
            name = prefix + fld.json_name
            if fld.type == FDP.TYPE_MESSAGE:
                nested = fld.type_name.lstrip(".")
                if nested in ("google.protobuf.Timestamp", "google.protobuf.Duration") or (
                    nested == "google.protobuf.FieldMask"
                ):
                    yield name, fld, full_name
                elif (
                    nested not in WELL_KNOWN
                    and fld.label != FDP.LABEL_REPEATED
                    and depth < 3
                    and not self.catalog.message(nested).options.map_entry
                ):
                    yield from self.query_fields(nested, frozenset(), name + ".", depth + 1)
                continue
            yield name, fld, full_name
