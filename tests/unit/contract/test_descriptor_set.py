"""The descriptor set Envoy and grpcurl load describes grpc.health.v1 exactly as served.

`proto/vendor/grpc/health/v1/health.proto` is written out from the grpcio-health-checking
wheel (which ships no .proto); the compiled file must match the wheel's own descriptor,
which is what every server runs. Envoy's transcoder must still transcode only our
services: Health is in the set for grpcurl and the internal listener, not for REST.
"""

from __future__ import annotations

import subprocess

import yaml
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from agentmesh.devstack import paths
from agentmesh.devstack._proc import find_executable
from agentmesh.devstack.envoy_config import SERVICE_NAMES, dev_values, render_envoy_config

HEALTH_FILE = "grpc/health/v1/health.proto"


def descriptor_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(paths.descriptor_set().read_bytes())
    return {file.name: file for file in fds.file}


def without_json_names(
    file: descriptor_pb2.FileDescriptorProto,
) -> descriptor_pb2.FileDescriptorProto:
    """A copy without the file name, the comments and the json_name buf fills in
    (protoc's Python descriptors omit them); everything else must be equal."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    copy.ClearField("name")
    copy.ClearField("source_code_info")  # comments: in the set for grpcurl, not compiled in
    pending = list(copy.message_type)
    while pending:
        message = pending.pop()
        for field in message.field:
            field.ClearField("json_name")
        pending.extend(message.nested_type)
    return copy


def test_health_in_the_descriptor_set_is_the_one_the_servers_run() -> None:
    files = descriptor_files()
    assert HEALTH_FILE in files, "run `make gen`: proto/vendor/grpc/health is not compiled in"
    ours = files[HEALTH_FILE]
    served = descriptor_pb2.FileDescriptorProto.FromString(health_pb2.DESCRIPTOR.serialized_pb)

    assert ours.package == "grpc.health.v1"
    assert [m.name for m in ours.service[0].method] == ["Check", "List", "Watch"]
    assert without_json_names(ours) == without_json_names(served)


def test_the_transcoder_lists_only_our_services() -> None:
    values = dev_values(
        ports={key: 50051 + i for i, key in enumerate(SERVICE_NAMES)},
        descriptor_path=paths.descriptor_set(),
    )
    config = yaml.safe_load(render_envoy_config(values))
    (external,) = [
        listener
        for listener in config["static_resources"]["listeners"]
        if listener["name"] == "external"
    ]
    manager = external["filter_chains"][0]["filters"][0]["typed_config"]
    (transcoder,) = [
        f["typed_config"]
        for f in manager["http_filters"]
        if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    ]
    assert sorted(transcoder["services"]) == sorted(SERVICE_NAMES.values())
    assert "grpc.health.v1.Health" in {
        f"{file.package}.{service.name}"
        for file in descriptor_files().values()
        for service in file.service
    }


def test_grpcurl_describe_shows_the_proto_comments() -> None:
    # docs/api/README.md calls the proto comments the reference: the descriptor set
    # keeps them, so `grpcurl -protoset … describe` prints them.
    described = subprocess.run(
        [
            str(find_executable("grpcurl")),
            "-protoset",
            str(paths.descriptor_set()),
            "describe",
            "agentmesh.v1.MemoryService.CreateSession",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    comment_lines = [line for line in described.splitlines() if line.lstrip().startswith("//")]
    assert len(comment_lines) >= 3, described
    assert "ALREADY_EXISTS" in described  # the errors the RPC's comment lists
