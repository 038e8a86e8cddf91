"""Every web-facing MemoryService RPC as JSON through Envoy, as docs/api/memory.md shows it.

One test per RPC with a `google.api.http` annotation (status, camelCase JSON out, values
that round-trip), plus the error cases a web client has to handle: 400 with field
violations, 404, 409 for a stale etag, 401. The mesh is shared by the whole test
session, so every test works on resources with ids of its own.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import httpx
import pytest

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
REQUEST_INFO = "type.googleapis.com/google.rpc.RequestInfo"
RESOURCE_INFO = "type.googleapis.com/google.rpc.ResourceInfo"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"

# Maps whose keys are the client's own data, not field names.
_USER_MAPS = frozenset({"labels", "metadata", "values", "data", "metadataFilter"})
_CAMEL = re.compile(r"^[a-z][A-Za-z0-9]*$|^@type$")


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    _assert_camel_case(body)
    return body


def _error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """A JSON google.rpc.Status with this HTTP status and gRPC code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["message"], body
    assert isinstance(body["details"], list), body
    return body


def _service_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    """An error the service produced: ErrorInfo and RequestInfo always travel with it."""
    body = _error(response, status, code)
    types = [d["@type"] for d in body["details"]]
    assert ERROR_INFO in types, body
    assert REQUEST_INFO in types, body
    request_info = _detail(body, REQUEST_INFO)
    assert request_info["requestId"] == response.headers["x-request-id"]
    return body


def _detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    found = [d for d in body["details"] if d["@type"] == type_url]
    assert len(found) == 1, body
    detail: dict[str, Any] = found[0]
    return detail


def _reason(body: dict[str, Any]) -> str:
    reason: str = _detail(body, ERROR_INFO)["reason"]
    return reason


def _violations(body: dict[str, Any]) -> list[str]:
    return [v["field"] for v in _detail(body, BAD_REQUEST)["fieldViolations"]]


def _assert_camel_case(value: Any, path: str = "$") -> None:
    """Field names out are lowerCamelCase (the keys of user maps are left alone)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert _CAMEL.match(key), f"{path}.{key} is not lowerCamelCase"
            if key not in _USER_MAPS:
                _assert_camel_case(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _assert_camel_case(item, f"{path}[{index}]")


def _assert_timestamp(value: Any) -> datetime:
    """An RFC 3339 timestamp in UTC, as the JSON mapping prints google.protobuf.Timestamp."""
    assert isinstance(value, str), value
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _has_keys(obj: dict[str, Any], keys: Iterable[str]) -> None:
    missing = set(keys) - obj.keys()
    assert not missing, f"missing {sorted(missing)} in {obj}"


def _create_session(http: httpx.Client, **fields: Any) -> str:
    session_id = _uid("s")
    _ok(http.post("/v1/sessions", params={"sessionId": session_id}, json=fields))
    return session_id


def _create_memory(http: httpx.Client, namespace: str, content: str, **fields: Any) -> str:
    body = _ok(
        http.post("/v1/memories", json={"namespace": namespace, "content": content, **fields})
    )
    name: str = body["name"]
    return name


# -------------------------------------------------------------------------- sessions


SESSION_KEYS = (
    "name",
    "displayName",
    "labels",
    "metadata",
    "messageCount",
    "lastSequence",
    "createTime",
    "updateTime",
    "etag",
)


def test_create_session(http: httpx.Client) -> None:
    session_id, request_id = _uid("s"), str(uuid.uuid4())
    payload = {
        "displayName": "Trip to Lisbon",
        "labels": {"channel": "web", "team": "travel"},
        "metadata": {"locale": "en-GB", "party": {"adults": 2, "children": 1}, "vip": True},
    }
    params = {"sessionId": session_id, "requestId": request_id}
    session = _ok(http.post("/v1/sessions", params=params, json=payload))
    _has_keys(session, SESSION_KEYS)
    assert session["name"] == f"sessions/{session_id}"
    assert session["displayName"] == "Trip to Lisbon"
    assert session["labels"] == payload["labels"]
    assert session["metadata"] == payload["metadata"]  # Struct is plain JSON
    assert session["messageCount"] == "0"  # int64 is a JSON string
    assert session["lastSequence"] == "0"
    assert _assert_timestamp(session["createTime"]) == _assert_timestamp(session["updateTime"])
    assert isinstance(session["etag"], str)
    assert session["etag"]

    # A retry with the same requestId returns the first result, not a conflict.
    replay = _ok(http.post("/v1/sessions", params=params, json=payload))
    assert replay == session

    # The same requestId on a different request is refused, not answered with the first.
    for other_params, other_payload in (
        (params, {**payload, "displayName": "Trip to Porto"}),
        ({"sessionId": _uid("s"), "requestId": request_id}, payload),
    ):
        reused = http.post("/v1/sessions", params=other_params, json=other_payload)
        body = _service_error(reused, 400, 3)
        assert _violations(body) == ["request_id"]
        assert "already used for a different request" in body["message"]

    # The same id without the key is a different request: 409 ALREADY_EXISTS.
    taken = http.post("/v1/sessions", params={"sessionId": session_id}, json=payload)
    body = _service_error(taken, 409, 6)
    assert _reason(body) == "RESOURCE_ALREADY_EXISTS"
    assert _detail(body, RESOURCE_INFO)["resourceName"] == f"sessions/{session_id}"

    # No sessionId: the server picks a valid one.
    generated = _ok(http.post("/v1/sessions", json={}))
    assert re.fullmatch(r"sessions/[a-z][a-z0-9-]{0,62}", generated["name"]), generated


def test_create_session_violations_are_400_with_field_names(http: httpx.Client) -> None:
    response = http.post(
        "/v1/sessions",
        params={"sessionId": _uid("s")},
        json={"displayName": "x" * 300, "labels": {"Channel": "web"}},
    )
    body = _service_error(response, 400, 3)
    fields = _violations(body)
    assert "session.display_name" in fields
    assert 'session.labels["Channel"]' in fields

    bad_id = http.post("/v1/sessions", params={"sessionId": "Not_Valid"}, json={})
    assert _violations(_service_error(bad_id, 400, 3)) == ["session_id"]


def test_get_session(http: httpx.Client) -> None:
    session_id = _create_session(http, displayName="Get me", labels={"k": "v"})
    session = _ok(http.get(f"/v1/sessions/{session_id}"))
    _has_keys(session, SESSION_KEYS)
    assert session["name"] == f"sessions/{session_id}"
    assert session["displayName"] == "Get me"
    assert session["labels"] == {"k": "v"}
    assert session["metadata"] == {}  # default values are printed

    missing = _service_error(http.get(f"/v1/sessions/{_uid('nobody')}"), 404, 5)
    assert _reason(missing) == "RESOURCE_NOT_FOUND"
    assert _detail(missing, RESOURCE_INFO)["resourceType"] == "agentmesh.dev/Session"

    malformed = _service_error(http.get("/v1/sessions/Bad_Name"), 400, 3)
    assert _violations(malformed) == ["name"]


def test_list_sessions(http: httpx.Client) -> None:
    batch = uuid.uuid4().hex[:12]
    created = [
        _create_session(http, displayName=f"n{i}", labels={"batch": batch}) for i in range(3)
    ]
    label_filter = f'labels.batch = "{batch}"'

    first = _ok(http.get("/v1/sessions", params={"filter": label_filter, "pageSize": 2}))
    assert first.keys() == {"sessions", "nextPageToken"}
    assert first["nextPageToken"]
    second = _ok(
        http.get(
            "/v1/sessions",
            params={"filter": label_filter, "pageSize": 2, "pageToken": first["nextPageToken"]},
        )
    )
    assert second["nextPageToken"] == ""
    names = [s["name"] for s in first["sessions"] + second["sessions"]]
    # Newest first, every session exactly once across pages.
    assert names == [f"sessions/{sid}" for sid in reversed(created)]

    # A time range combines with the label filter.
    since = first["sessions"][-1]["createTime"]
    recent = _ok(
        http.get("/v1/sessions", params={"filter": f'{label_filter} AND create_time >= "{since}"'})
    )
    assert [s["name"] for s in recent["sessions"]] == names[:2]

    # A token is bound to the filter that produced it.
    other = http.get(
        "/v1/sessions",
        params={"filter": 'labels.batch = "other"', "pageToken": first["nextPageToken"]},
    )
    assert _violations(_service_error(other, 400, 3)) == ["page_token"]

    negative = http.get("/v1/sessions", params={"pageSize": -1})
    assert _violations(_service_error(negative, 400, 3)) == ["page_size"]


@pytest.mark.parametrize(
    "bad_filter",
    [
        "color = red",  # not filterable
        'create_time >= "yesterday"',  # not a timestamp
        'labels.channel != "web"',  # labels take = only
        'labels.channel = "web" OR labels.channel = "app"',  # no OR
    ],
)
def test_list_sessions_bad_filter_is_400_on_filter(http: httpx.Client, bad_filter: str) -> None:
    body = _service_error(http.get("/v1/sessions", params={"filter": bad_filter}), 400, 3)
    assert _violations(body) == ["filter"]


def test_update_session(http: httpx.Client) -> None:
    session_id = _create_session(
        http, displayName="Before", labels={"channel": "web"}, metadata={"a": 1}
    )
    current = _ok(http.get(f"/v1/sessions/{session_id}"))

    updated = _ok(
        http.patch(
            f"/v1/sessions/{session_id}",
            params={"updateMask": "displayName"},
            json={"displayName": "After", "labels": {"ignored": "yes"}, "etag": current["etag"]},
        )
    )
    assert updated["displayName"] == "After"
    assert updated["labels"] == {"channel": "web"}  # not in the mask: kept
    assert updated["metadata"] == {"a": 1}
    assert updated["etag"] != current["etag"]
    assert _assert_timestamp(updated["updateTime"]) > _assert_timestamp(current["updateTime"])
    assert updated["createTime"] == current["createTime"]

    # Several paths, snake_case or camelCase.
    both = _ok(
        http.patch(
            f"/v1/sessions/{session_id}",
            params={"updateMask": "labels,metadata"},
            json={"labels": {"stage": "booked"}, "metadata": {"n": [1, 2.5, "x", None, True]}},
        )
    )
    assert both["labels"] == {"stage": "booked"}
    assert both["metadata"] == {"n": [1, 2.5, "x", None, True]}
    assert both["displayName"] == "After"

    bad_mask = http.patch(
        f"/v1/sessions/{session_id}", params={"updateMask": "color"}, json={"displayName": "x"}
    )
    assert _violations(_service_error(bad_mask, 400, 3)) == ["update_mask"]

    missing = http.patch(
        f"/v1/sessions/{_uid('nobody')}", params={"updateMask": "displayName"}, json={}
    )
    _service_error(missing, 404, 5)


def test_update_session_with_stale_etag_is_409_aborted(http: httpx.Client) -> None:
    session_id = _create_session(http, displayName="v1")
    stale = _ok(http.get(f"/v1/sessions/{session_id}"))["etag"]
    _ok(
        http.patch(
            f"/v1/sessions/{session_id}",
            params={"updateMask": "displayName"},
            json={"displayName": "v2", "etag": stale},
        )
    )
    conflict = http.patch(
        f"/v1/sessions/{session_id}",
        params={"updateMask": "displayName"},
        json={"displayName": "lost update", "etag": stale},
    )
    body = _service_error(conflict, 409, 10)
    assert _reason(body) == "ETAG_MISMATCH"
    assert _ok(http.get(f"/v1/sessions/{session_id}"))["displayName"] == "v2"


def test_delete_session(http: httpx.Client) -> None:
    """Soft delete (the mesh runs the default 7-day purge window): gone for every route,
    the id still taken, until UndeleteSession or the purge."""
    session_id = _create_session(http, displayName="doomed")
    path = f"/v1/sessions/{session_id}"
    _ok(
        http.post(
            f"{path}/messages:append",
            json={"messages": [{"role": "ROLE_USER", "parts": [{"text": "hi"}]}]},
        )
    )
    _ok(http.patch(f"{path}/workingMemory", json={"workingMemory": {"values": {"k": 1}}}))
    etag = _ok(http.get(path))["etag"]

    stale = http.delete(path, params={"etag": '"999999"'})
    assert _reason(_service_error(stale, 409, 10)) == "ETAG_MISMATCH"
    malformed = http.delete(path, params={"etag": '"1-nope"'})
    assert _violations(_service_error(malformed, 400, 3)) == ["etag"]

    deleted = http.delete(path, params={"etag": etag})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {}  # google.protobuf.Empty

    for gone in (path, f"{path}/messages", f"{path}/workingMemory"):
        _service_error(http.get(gone), 404, 5)
    appended = http.post(
        f"{path}/messages:append",
        json={"messages": [{"role": "ROLE_USER", "parts": [{"text": "late"}]}]},
    )
    _service_error(appended, 404, 5)
    patched = http.patch(path, params={"updateMask": "displayName"}, json={"displayName": "x"})
    _service_error(patched, 404, 5)
    # Deleting again changes nothing: 404, or 200 with allowMissing.
    _service_error(http.delete(path), 404, 5)
    assert http.delete(path, params={"allowMissing": "true"}).status_code == 200
    _service_error(http.delete(path, params={"etag": etag}), 404, 5)

    # The id stays taken until the purge: 409 with its own reason and the purge time.
    taken = _service_error(
        http.post("/v1/sessions", params={"sessionId": session_id}, json={}), 409, 6
    )
    info = _detail(taken, ERROR_INFO)
    assert info["reason"] == "SESSION_DELETED"
    purge_time = _assert_timestamp(info["metadata"]["purge_time"])
    delete_time = _assert_timestamp(info["metadata"]["delete_time"])
    assert (purge_time - delete_time).total_seconds() == 7 * 86_400
    assert info["metadata"]["purge_time"] in taken["message"]
    assert _detail(taken, RESOURCE_INFO)["resourceName"] == f"sessions/{session_id}"


def test_list_sessions_show_deleted(http: httpx.Client) -> None:
    run = _uid("run")
    live = _create_session(http, labels={"run": run})
    doomed = _create_session(http, labels={"run": run})
    assert http.delete(f"/v1/sessions/{doomed}").status_code == 200
    by_run = f'labels.run = "{run}"'

    default = _ok(http.get("/v1/sessions", params={"filter": by_run}))
    assert [s["name"] for s in default["sessions"]] == [f"sessions/{live}"]
    assert "deleteTime" not in default["sessions"][0]  # unset message fields are left out

    shown = _ok(http.get("/v1/sessions", params={"filter": by_run, "showDeleted": "true"}))
    deleted, alive = shown["sessions"]
    assert deleted["name"] == f"sessions/{doomed}"
    _has_keys(deleted, (*SESSION_KEYS, "deleteTime", "purgeTime"))
    delete_time = _assert_timestamp(deleted["deleteTime"])
    purge_time = _assert_timestamp(deleted["purgeTime"])
    assert (purge_time - delete_time).total_seconds() == 7 * 86_400
    assert alive["name"] == f"sessions/{live}"
    assert "deleteTime" not in alive
    assert "purgeTime" not in alive

    trash = _ok(
        http.get(
            "/v1/sessions",
            params={
                "filter": f'{by_run} AND delete_time >= "1970-01-01T00:00:00Z"',
                "showDeleted": True,
            },
        )
    )
    assert [s["name"] for s in trash["sessions"]] == [f"sessions/{doomed}"]
    bad = http.get("/v1/sessions", params={"showDeleted": "maybe"})
    _error(bad, 400, 3)  # Envoy refuses a value that is not a bool


def test_undelete_session(http: httpx.Client) -> None:
    session_id = _create_session(http, displayName="restore me")
    path = f"/v1/sessions/{session_id}"
    _ok(
        http.post(
            f"{path}/messages:append",
            json={"messages": [{"role": "ROLE_USER", "parts": [{"text": "kept"}]}]},
        )
    )
    _ok(http.patch(f"{path}/workingMemory", json={"workingMemory": {"values": {"step": 2}}}))
    before = _ok(http.get(path))
    assert http.delete(path).status_code == 200

    restored = _ok(http.post(f"{path}:undelete", json={}))
    _has_keys(restored, SESSION_KEYS)
    assert "deleteTime" not in restored
    assert "purgeTime" not in restored
    assert restored["displayName"] == "restore me"
    assert restored["messageCount"] == "1"
    assert restored["createTime"] == before["createTime"]
    assert restored["etag"] != before["etag"]
    assert _ok(http.get(path)) == restored
    messages = _ok(http.get(f"{path}/messages"))["messages"]
    assert [m["parts"][0]["text"] for m in messages] == ["kept"]
    assert _ok(http.get(f"{path}/workingMemory"))["values"] == {"step": 2}

    # Not deleted (e.g. a retry of the undelete): 409; unknown: 404; malformed: 400.
    again = _service_error(http.post(f"{path}:undelete", json={}), 409, 6)
    assert _reason(again) == "RESOURCE_ALREADY_EXISTS"
    assert "not deleted" in again["message"]
    _service_error(http.post(f"/v1/sessions/{_uid('nobody')}:undelete", json={}), 404, 5)
    bad = _service_error(http.post("/v1/sessions/Bad_Name:undelete", json={}), 400, 3)
    assert _violations(bad) == ["name"]
    # The old etag is stale: the delete and the undelete each changed the session.
    stale = http.patch(
        path,
        params={"updateMask": "displayName"},
        json={"displayName": "x", "etag": before["etag"]},
    )
    assert _reason(_service_error(stale, 409, 10)) == "ETAG_MISMATCH"


# -------------------------------------------------------------------------- messages


def test_append_messages(http: httpx.Client) -> None:
    session_id = _create_session(http)
    path = f"/v1/sessions/{session_id}/messages:append"
    blob = bytes([0, 1, 2, 254, 255])
    request = {
        "requestId": str(uuid.uuid4()),
        "messages": [
            {
                "messageId": "m-1",
                "role": "ROLE_USER",
                "parts": [{"text": "Find me a hotel"}],
                "tokenCount": "11",
            },
            {
                "messageId": "m-2",
                "role": "ROLE_ASSISTANT",
                "agent": "agents/echo",
                "parts": [
                    {"text": "Two options."},
                    {"data": {"hotels": [{"name": "Alfama Inn", "price": 120}]}},
                    {"blob": base64.b64encode(blob).decode(), "mediaType": "image/png"},
                    {"uri": "artifacts/plan", "mediaType": "text/markdown"},
                ],
                "tokenCount": 42,  # a JSON number is accepted too
                "metadata": {"model": "none"},
            },
        ],
    }
    stored = _ok(http.post(path, json=request))["messages"]
    assert [m["name"] for m in stored] == [
        f"sessions/{session_id}/messages/m-1",
        f"sessions/{session_id}/messages/m-2",
    ]
    assert [m["sequence"] for m in stored] == ["1", "2"]
    assert [m["role"] for m in stored] == ["ROLE_USER", "ROLE_ASSISTANT"]
    assert [m["tokenCount"] for m in stored] == ["11", "42"]
    parts = stored[1]["parts"]
    assert parts[0]["text"] == "Two options."
    assert parts[1]["data"] == {"hotels": [{"name": "Alfama Inn", "price": 120}]}
    assert base64.b64decode(parts[2]["blob"]) == blob
    assert parts[2]["mediaType"] == "image/png"
    assert parts[3]["uri"] == "artifacts/plan"
    assert stored[1]["metadata"] == {"model": "none"}
    assert stored[1]["agent"] == "agents/echo"
    _assert_timestamp(stored[0]["createTime"])

    # Retried with the same requestId: the stored messages, not copies.
    assert _ok(http.post(path, json=request))["messages"] == stored
    # A message id already in the session is returned as stored; a new one is appended.
    again = _ok(
        http.post(
            path,
            json={
                "messages": [
                    {"messageId": "m-2", "role": "ROLE_ASSISTANT", "parts": [{"text": "dup"}]},
                    {"role": "ROLE_TOOL", "toolCallId": "call-1", "parts": [{"text": "42"}]},
                ]
            },
        )
    )["messages"]
    assert again[0] == stored[1]
    assert again[1]["sequence"] == "3"
    assert again[1]["role"] == "ROLE_TOOL"
    assert again[1]["toolCallId"] == "call-1"
    assert again[1]["messageId"]  # generated

    session = _ok(http.get(f"/v1/sessions/{session_id}"))
    assert session["messageCount"] == "3"
    assert session["lastSequence"] == "3"


def test_append_messages_violations_name_the_message(http: httpx.Client) -> None:
    session_id = _create_session(http)
    path = f"/v1/sessions/{session_id}/messages:append"
    response = http.post(
        path,
        json={"messages": [{"parts": [{"text": "no role"}]}, {"role": "ROLE_USER", "parts": []}]},
    )
    assert _violations(_service_error(response, 400, 3)) == [
        "messages[0].role",
        "messages[1].parts",
    ]
    assert _violations(_service_error(http.post(path, json={"messages": []}), 400, 3)) == [
        "messages"
    ]
    # Nothing was half-written.
    assert _ok(http.get(f"/v1/sessions/{session_id}"))["messageCount"] == "0"

    unknown = http.post(
        f"/v1/sessions/{_uid('nobody')}/messages:append",
        json={"messages": [{"role": "ROLE_USER", "parts": [{"text": "x"}]}]},
    )
    _service_error(unknown, 404, 5)


def test_wrongly_typed_fields_are_400_json(http: httpx.Client) -> None:
    """Envoy refuses a value of the wrong JSON type before the service sees it."""
    session_id = _create_session(http)
    cases = [
        http.post(
            f"/v1/sessions/{session_id}/messages:append",
            json={"messages": [{"role": "ROLE_USER", "parts": [{"text": "x"}], "tokenCount": "x"}]},
        ),
        http.post(
            f"/v1/sessions/{session_id}/messages:append",
            json={"messages": [{"role": "ROLE_BOSS", "parts": [{"text": "x"}]}]},
        ),
        http.post("/v1/sessions", json={"displayName": {"not": "a string"}}),
        http.post("/v1/sessions", json={"labels": ["web"]}),
        http.post("/v1/memories:search", json={"text": "x", "topK": "ten"}),
        http.post("/v1/artifacts/a-bin:put", json={"mediaType": "x/y", "data": "not base64!!"}),
        http.get(f"/v1/sessions/{session_id}/messages", params={"startTime": "yesterday"}),
        http.patch(
            f"/v1/sessions/{session_id}/workingMemory",
            json={"workingMemory": {"values": {"a": 1}}, "ttl": "forever"},
        ),
    ]
    for response in cases:
        _error(response, 400, 3)
    assert _ok(http.get(f"/v1/sessions/{session_id}"))["messageCount"] == "0"


def test_list_messages(http: httpx.Client) -> None:
    session_id = _create_session(http)
    texts = [f"message {i}" for i in range(5)]
    _ok(
        http.post(
            f"/v1/sessions/{session_id}/messages:append",
            json={"messages": [{"role": "ROLE_USER", "parts": [{"text": t}]} for t in texts]},
        )
    )
    path = f"/v1/sessions/{session_id}/messages"

    seen: list[str] = []
    token = ""
    for _ in range(5):  # bounded: 5 messages, pages of 2
        page = _ok(http.get(path, params={"pageSize": 2, "pageToken": token}))
        assert page.keys() == {"messages", "nextPageToken"}
        seen += [m["parts"][0]["text"] for m in page["messages"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert seen == texts

    tail = _ok(http.get(path, params={"afterSequence": "3"}))["messages"]
    assert [m["sequence"] for m in tail] == ["4", "5"]
    newest = _ok(http.get(path, params={"descending": "true", "pageSize": 1}))
    assert newest["messages"][0]["sequence"] == "5"
    assert newest["nextPageToken"]

    first_time = _ok(http.get(path))["messages"][0]["createTime"]
    in_range = _ok(http.get(path, params={"startTime": first_time}))["messages"]
    assert len(in_range) == 5
    before = _ok(http.get(path, params={"endTime": first_time}))["messages"]
    assert before == []

    inverted = http.get(
        path, params={"startTime": "2030-01-01T00:00:00Z", "endTime": "2020-01-01T00:00:00Z"}
    )
    assert _violations(_service_error(inverted, 400, 3)) == ["end_time"]
    bad_token = http.get(path, params={"pageToken": "xyz"})
    assert _violations(_service_error(bad_token, 400, 3)) == ["page_token"]
    _service_error(http.get(f"/v1/sessions/{_uid('nobody')}/messages"), 404, 5)


# -------------------------------------------------------------------------- memories


MEMORY_KEYS = (
    "name",
    "namespace",
    "kind",
    "content",
    "metadata",
    "session",
    "mergeCount",
    "createTime",
    "updateTime",
    "etag",
)


def test_create_memory(http: httpx.Client) -> None:
    session_id = _create_session(http)
    namespace = f"users/{_uid('u')}/preferences"
    payload = {
        "namespace": namespace,
        "kind": "MEMORY_KIND_EPISODIC",
        "content": "Booked Alfama Inn in Lisbon for 3-6 May",
        "metadata": {"source": "chat", "confidence": 0.9, "tags": ["hotel"]},
        "session": f"sessions/{session_id}",
        "expireTime": "2030-06-01T00:00:00Z",
    }
    request_id = str(uuid.uuid4())
    memory = _ok(http.post("/v1/memories", params={"requestId": request_id}, json=payload))
    _has_keys(memory, MEMORY_KEYS)
    assert re.fullmatch(r"memories/[a-z][a-z0-9-]*", memory["name"]), memory
    for key in ("namespace", "kind", "content", "metadata", "session", "expireTime"):
        assert memory[key] == payload[key], key
    assert memory["mergeCount"] == 0
    assert not memory.get("embedding")  # INPUT_ONLY: never returned
    _assert_timestamp(memory["createTime"])

    replay = http.post("/v1/memories", params={"requestId": request_id}, json=payload)
    assert _ok(replay)["name"] == memory["name"]

    # Kind unset means SEMANTIC.
    plain = _ok(http.post("/v1/memories", json={"namespace": namespace, "content": "Likes tea"}))
    assert plain["kind"] == "MEMORY_KIND_SEMANTIC"


def test_create_memory_near_duplicate_is_merged(http: httpx.Client) -> None:
    namespace = f"users/{_uid('u')}/preferences"
    first = _ok(
        http.post(
            "/v1/memories",
            json={"namespace": namespace, "content": "Prefers aisle seats on flights"},
        )
    )
    again = _ok(
        http.post(
            "/v1/memories",
            json={
                "namespace": namespace,
                "content": "Prefers aisle seats on flights",
                "metadata": {"source": "email"},
            },
        )
    )
    assert again["name"] == first["name"]
    assert again["mergeCount"] == 1
    assert again["metadata"] == {"source": "email"}
    listed = _ok(http.get("/v1/memories", params={"filter": f'namespace = "{namespace}"'}))
    assert [m["name"] for m in listed["memories"]] == [first["name"]]


def test_create_memory_violations(http: httpx.Client) -> None:
    bad = http.post("/v1/memories", json={"namespace": "users/u1 prefs", "content": ""})
    assert set(_violations(_service_error(bad, 400, 3))) == {"memory.namespace", "memory.content"}
    wrong_dim = http.post(
        "/v1/memories", json={"namespace": "users/u1", "content": "x", "embedding": [0.5, 0.5]}
    )
    assert _violations(_service_error(wrong_dim, 400, 3)) == ["memory.embedding"]
    past = http.post(
        "/v1/memories",
        json={"namespace": "users/u1", "content": "x", "expireTime": "2020-01-01T00:00:00Z"},
    )
    assert _violations(_service_error(past, 400, 3)) == ["memory.expire_time"]


def test_batch_create_memories(http: httpx.Client) -> None:
    root = f"users/{_uid('u')}"
    items = [
        ("trips", "MEMORY_KIND_EPISODIC", "Booked Alfama Inn in Lisbon for 3-6 May"),
        ("howto", "MEMORY_KIND_PROCEDURAL", "Always confirm the dates before booking"),
        ("preferences", "MEMORY_KIND_SEMANTIC", "Is vegetarian and avoids seafood"),
    ]
    request = {
        "requests": [
            {"memory": {"namespace": f"{root}/{ns}", "kind": kind, "content": content}}
            for ns, kind, content in items
        ]
    }
    memories = _ok(http.post("/v1/memories:batchCreate", json=request))["memories"]
    assert [(m["namespace"], m["kind"], m["content"]) for m in memories] == [
        (f"{root}/{ns}", kind, content) for ns, kind, content in items
    ]
    assert len({m["name"] for m in memories}) == 3
    for memory in memories:
        _has_keys(memory, MEMORY_KEYS)

    # All or none: one bad item names its index and nothing is stored.
    bad = {
        "requests": [
            {"memory": {"namespace": f"{root}/x", "content": "fine"}},
            {"memory": {"namespace": f"{root}/x", "content": ""}},
        ]
    }
    body = _service_error(http.post("/v1/memories:batchCreate", json=bad), 400, 3)
    assert _violations(body) == ["requests[1].memory.content"]
    listed = _ok(http.get("/v1/memories", params={"filter": f'namespace = "{root}/x"'}))
    assert listed["memories"] == []


def test_get_memory(http: httpx.Client) -> None:
    namespace = f"users/{_uid('u')}"
    name = _create_memory(http, namespace, "Has a dog called Rex", metadata={"k": "v"})
    memory = _ok(http.get(f"/v1/{name}"))
    _has_keys(memory, MEMORY_KEYS)
    assert memory["name"] == name
    assert memory["content"] == "Has a dog called Rex"
    assert memory["metadata"] == {"k": "v"}

    missing = _service_error(http.get(f"/v1/memories/{_uid('nobody')}"), 404, 5)
    assert _detail(missing, RESOURCE_INFO)["resourceType"] == "agentmesh.dev/Memory"
    assert _violations(_service_error(http.get("/v1/memories/Bad_Name"), 400, 3)) == ["name"]


def test_list_memories(http: httpx.Client) -> None:
    root = f"users/{_uid('u')}"
    session_id = _create_session(http)
    fact = _create_memory(http, f"{root}/prefs", "Prefers window seats", metadata={"src": "chat"})
    episode = _create_memory(
        http,
        f"{root}/trips",
        "Flew to Porto in March",
        kind="MEMORY_KIND_EPISODIC",
        session=f"sessions/{session_id}",
    )
    other = _create_memory(http, f"{root}0/prefs", "Someone else's window seat")

    def names(filter_: str, **params: Any) -> list[str]:
        body = _ok(http.get("/v1/memories", params={"filter": filter_, **params}))
        assert body.keys() == {"memories", "nextPageToken"}
        return [m["name"] for m in body["memories"]]

    # Prefix is segment-wise (`{root}0` is not under `{root}`), newest first.
    assert names(f'namespace = "{root}/*"') == [episode, fact]
    assert other not in names(f'namespace = "{root}/*"')
    assert names(f'namespace = "{root}/*" AND kind = EPISODIC') == [episode]
    assert names(f'namespace = "{root}/*" AND kind = MEMORY_KIND_SEMANTIC') == [fact]
    assert names(f'namespace = "{root}/*" AND metadata.src = "chat"') == [fact]
    assert names(f'session = "sessions/{session_id}"') == [episode]
    assert names(f'namespace = "{root}"') == []  # without /* the namespace is exact

    page = _ok(
        http.get("/v1/memories", params={"filter": f'namespace = "{root}/*"', "pageSize": 1})
    )
    assert [m["name"] for m in page["memories"]] == [episode]
    rest = _ok(
        http.get(
            "/v1/memories",
            params={
                "filter": f'namespace = "{root}/*"',
                "pageSize": 1,
                "pageToken": page["nextPageToken"],
            },
        )
    )
    assert [m["name"] for m in rest["memories"]] == [fact]
    assert rest["nextPageToken"] == ""


@pytest.mark.parametrize("bad_filter", ["score > 0.5", "kind = FUZZY", 'namespace = "a//b"'])
def test_list_memories_bad_filter_is_400_on_filter(http: httpx.Client, bad_filter: str) -> None:
    body = _service_error(http.get("/v1/memories", params={"filter": bad_filter}), 400, 3)
    assert _violations(body) == ["filter"]


def test_update_memory(http: httpx.Client) -> None:
    namespace = f"users/{_uid('u')}/prefs"
    name = _create_memory(http, namespace, "Is vegetarian", metadata={"source": "chat"})
    current = _ok(http.get(f"/v1/{name}"))

    updated = _ok(
        http.patch(
            f"/v1/{name}",
            params={"updateMask": "content,metadata"},
            json={
                "content": "Is vegan: no meat, fish, eggs or dairy",
                "metadata": {"source": "chat", "updatedBy": "alice"},
                "kind": "MEMORY_KIND_PROCEDURAL",  # not in the mask: ignored
                "etag": current["etag"],
            },
        )
    )
    assert updated["content"] == "Is vegan: no meat, fish, eggs or dairy"
    assert updated["metadata"] == {"source": "chat", "updatedBy": "alice"}
    assert updated["kind"] == "MEMORY_KIND_SEMANTIC"
    assert updated["etag"] != current["etag"]

    # The new content is what search finds now (it was re-embedded).
    hits = _ok(
        http.post("/v1/memories:search", json={"text": "vegan dairy", "namespacePrefix": namespace})
    )["results"]
    assert hits[0]["memory"]["name"] == name

    stale = http.patch(
        f"/v1/{name}",
        params={"updateMask": "content"},
        json={"content": "lost update", "etag": current["etag"]},
    )
    assert _reason(_service_error(stale, 409, 10)) == "ETAG_MISMATCH"

    no_mask = http.patch(f"/v1/{name}", json={"content": "x"})
    assert _violations(_service_error(no_mask, 400, 3)) == ["update_mask"]
    not_updatable = http.patch(
        f"/v1/{name}", params={"updateMask": "session"}, json={"session": "sessions/x"}
    )
    assert _violations(_service_error(not_updatable, 400, 3)) == ["update_mask"]
    _service_error(
        http.patch(
            f"/v1/memories/{_uid('nobody')}",
            params={"updateMask": "content"},
            json={"content": "x"},
        ),
        404,
        5,
    )
    assert _ok(http.get(f"/v1/{name}"))["content"] == "Is vegan: no meat, fish, eggs or dairy"


def test_delete_memory(http: httpx.Client) -> None:
    namespace = f"users/{_uid('u')}"
    name = _create_memory(http, namespace, "Temporary note to forget")
    deleted = http.delete(f"/v1/{name}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {}
    _service_error(http.get(f"/v1/{name}"), 404, 5)
    _service_error(http.delete(f"/v1/{name}"), 404, 5)
    assert http.delete(f"/v1/{name}", params={"allowMissing": True}).status_code == 200
    hits = _ok(
        http.post(
            "/v1/memories:search", json={"text": "note to forget", "namespacePrefix": namespace}
        )
    )
    assert hits["results"] == []


def test_search_memories(http: httpx.Client) -> None:
    root = f"users/{_uid('u')}"
    seats = _create_memory(
        http, f"{root}/prefs", "Prefers aisle seats on long flights", metadata={"src": "email"}
    )
    food = _create_memory(http, f"{root}/prefs", "Is vegetarian and avoids seafood")
    trip = _create_memory(
        http, f"{root}/trips", "Booked a hotel in Lisbon for May", kind="MEMORY_KIND_EPISODIC"
    )
    elsewhere = _create_memory(http, f"{root}0/prefs", "Prefers aisle seats on long flights")

    body = _ok(
        http.post(
            "/v1/memories:search",
            json={"text": "aisle seats on flights", "namespacePrefix": root, "topK": 3},
        )
    )
    assert body.keys() == {"results", "truncated"}
    assert body["truncated"] is False
    results = body["results"]
    assert results[0]["memory"]["name"] == seats
    assert {r["memory"]["name"] for r in results} <= {seats, food, trip}
    assert elsewhere not in {r["memory"]["name"] for r in results}
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert isinstance(scores[0], float)  # a double is a JSON number

    def hit_names(**query: Any) -> list[str]:
        found = _ok(http.post("/v1/memories:search", json={"namespacePrefix": root, **query}))
        return [r["memory"]["name"] for r in found["results"]]

    assert hit_names(text="hotel", kinds=["MEMORY_KIND_EPISODIC"]) == [trip]
    assert hit_names(text="seats", metadataFilter={"src": "email"}) == [seats]
    assert hit_names(text="Prefers aisle seats on long flights", minScore=0.99) == [seats]


def test_search_memories_by_vector(http: httpx.Client) -> None:
    namespace = f"users/{_uid('u')}"
    dimension = 384  # the dev and test servers' AGENTMESH_MEMORY_EMBEDDING_DIM
    axis = [0.0] * dimension
    axis[7] = 1.0
    name = _create_memory(http, namespace, "carries a precomputed vector", embedding=axis)
    results = _ok(
        http.post(
            "/v1/memories:search",
            json={"vector": {"values": axis}, "namespacePrefix": namespace, "topK": 1},
        )
    )["results"]
    assert [r["memory"]["name"] for r in results] == [name]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"namespacePrefix": "users/u1"}, "query"),
        ({"vector": {"values": [0.1, 0.2, 0.3]}}, "vector.values"),
        ({"text": "x", "topK": 500}, "top_k"),
        ({"text": "x", "minScore": 2}, "min_score"),
        ({"text": "x", "namespacePrefix": "users//u1"}, "namespace_prefix"),
    ],
)
def test_search_memories_violations(
    http: httpx.Client, request_body: dict[str, Any], field: str
) -> None:
    body = _service_error(http.post("/v1/memories:search", json=request_body), 400, 3)
    assert _violations(body) == [field]


# ------------------------------------------------------------------------- decisions


def test_create_decision(http: httpx.Client) -> None:
    session_id = _create_session(http)
    payload = {
        "agent": "conductor",
        "session": f"sessions/{session_id}",
        "inputSummary": "user asks for a hotel in Lisbon",
        "reasoning": "travel request with dates",
        "candidates": [
            {"name": "agents/travel", "score": 0.91, "reason": "mentions hotel"},
            {"name": "agents/echo", "score": 0.12, "reason": ""},
        ],
        "chosenAction": "agents/travel",
        "tools": ["search_hotels"],
        "outcome": "success",
        "latency": "0.250s",
        "usage": {"inputTokens": "812", "outputTokens": "96"},
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
        "metadata": {"router": "embedding", "threshold": 0.5},
    }
    request_id = str(uuid.uuid4())
    decision = _ok(http.post("/v1/decisions", params={"requestId": request_id}, json=payload))
    assert re.fullmatch(r"decisions/[a-z][a-z0-9-]*", decision["name"]), decision
    for key in payload.keys() - {"usage"}:
        assert decision[key] == payload[key], key
    # int64 token counts are JSON strings; the server fills in the total.
    assert decision["usage"] == {"inputTokens": "812", "outputTokens": "96", "totalTokens": "908"}
    assert decision["job"] == ""
    _assert_timestamp(decision["createTime"])

    replay = http.post("/v1/decisions", params={"requestId": request_id}, json=payload)
    assert _ok(replay) == decision

    minimal = _ok(http.post("/v1/decisions", json={"agent": "agents/echo", "chosenAction": "x"}))
    assert "usage" not in minimal  # an unset message field is left out
    assert minimal["candidates"] == []
    assert minimal["tools"] == []


def test_create_decision_violations(http: httpx.Client) -> None:
    no_agent = http.post("/v1/decisions", json={"chosenAction": "x"})
    assert _violations(_service_error(no_agent, 400, 3)) == ["decision.agent"]
    bad_session = http.post(
        "/v1/decisions", json={"agent": "conductor", "chosenAction": "x", "session": "s1"}
    )
    assert _violations(_service_error(bad_session, 400, 3)) == ["decision.session"]
    negative = http.post(
        "/v1/decisions", json={"agent": "conductor", "chosenAction": "x", "latency": "-1s"}
    )
    assert _violations(_service_error(negative, 400, 3)) == ["decision.latency"]


def test_get_decision(http: httpx.Client) -> None:
    created = _ok(
        http.post(
            "/v1/decisions",
            json={"agent": "agents/echo", "chosenAction": "tool:none", "latency": "1.5s"},
        )
    )
    fetched = _ok(http.get(f"/v1/{created['name']}"))
    assert fetched == created
    assert fetched["latency"] == "1.500s"  # Duration: seconds with an `s`
    missing = _service_error(http.get(f"/v1/decisions/{_uid('nobody')}"), 404, 5)
    assert _detail(missing, RESOURCE_INFO)["resourceType"] == "agentmesh.dev/Decision"


def test_list_decisions(http: httpx.Client) -> None:
    session = f"sessions/{_create_session(http)}"
    job = f"jobs/{_uid('j')}"
    first = _ok(
        http.post(
            "/v1/decisions", json={"agent": "conductor", "session": session, "chosenAction": "a"}
        )
    )
    second = _ok(
        http.post(
            "/v1/decisions",
            json={"agent": "agents/echo", "session": session, "job": job, "chosenAction": "b"},
        )
    )

    def names(filter_: str, **params: Any) -> tuple[list[str], str]:
        body = _ok(http.get("/v1/decisions", params={"filter": filter_, **params}))
        assert body.keys() == {"decisions", "nextPageToken"}
        return [d["name"] for d in body["decisions"]], body["nextPageToken"]

    assert names(f'session = "{session}"') == ([second["name"], first["name"]], "")
    assert names(f'session = "{session}" AND agent = "conductor"')[0] == [first["name"]]
    assert names(f'job = "{job}"')[0] == [second["name"]]
    since = second["createTime"]
    assert names(f'session = "{session}" AND create_time >= "{since}"')[0] == [second["name"]]

    page, token = names(f'session = "{session}"', pageSize=1)
    assert page == [second["name"]]
    assert names(f'session = "{session}"', pageSize=1, pageToken=token) == ([first["name"]], "")


@pytest.mark.parametrize("bad_filter", ['outcome = "success"', 'agent = "billing"'])
def test_list_decisions_bad_filter_is_400_on_filter(http: httpx.Client, bad_filter: str) -> None:
    body = _service_error(http.get("/v1/decisions", params={"filter": bad_filter}), 400, 3)
    assert _violations(body) == ["filter"]


# ------------------------------------------------------------------------- artifacts


ARTIFACT_KEYS = (
    "name",
    "version",
    "mediaType",
    "metadata",
    "session",
    "sizeBytes",
    "sha256",
    "createTime",
    "etag",
)


def test_put_artifact_text_round_trip(http: httpx.Client) -> None:
    artifact_id = _uid("plan")
    text = "# Lisbon\n\n- 3 May: arrive, Alfama Inn\n- 4 May: Belém \u2713\n"
    first = _ok(
        http.post(
            f"/v1/artifacts/{artifact_id}:put",
            params={"requestId": str(uuid.uuid4())},
            json={"mediaType": "text/markdown", "text": text, "metadata": {"author": "a"}},
        )
    )
    _has_keys(first, ARTIFACT_KEYS)
    assert first["name"] == f"artifacts/{artifact_id}"
    assert first["version"] == "1"  # int64 is a JSON string
    assert first["text"] == text
    assert "data" not in first
    raw = text.encode()
    assert first["sizeBytes"] == str(len(raw))
    assert first["sha256"] == hashlib.sha256(raw).hexdigest()

    second = _ok(
        http.post(
            f"/v1/artifacts/{artifact_id}:put",
            json={"mediaType": "text/markdown", "text": text + "- 5 May\n", "etag": first["etag"]},
        )
    )
    assert second["version"] == "2"
    assert second["metadata"] == {}  # metadata belongs to a version

    stale = http.post(
        f"/v1/artifacts/{artifact_id}:put",
        json={"mediaType": "text/markdown", "text": "lost", "etag": first["etag"]},
    )
    assert _reason(_service_error(stale, 409, 10)) == "ETAG_MISMATCH"
    assert _ok(http.get(f"/v1/artifacts/{artifact_id}"))["version"] == "2"


def test_put_artifact_binary_round_trip(http: httpx.Client) -> None:
    artifact_id = _uid("photo")
    data = bytes(range(256)) + b"\x00\xff\xfe"
    encoded = base64.b64encode(data).decode()
    stored = _ok(
        http.post(
            f"/v1/artifacts/{artifact_id}:put", json={"mediaType": "image/png", "data": encoded}
        )
    )
    assert base64.b64decode(stored["data"]) == data
    assert "text" not in stored
    assert stored["sizeBytes"] == str(len(data))
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    fetched = _ok(http.get(f"/v1/artifacts/{artifact_id}"))
    assert base64.b64decode(fetched["data"]) == data

    # URL-safe base64 is accepted on input too (the output is standard base64).
    urlsafe = base64.urlsafe_b64encode(data).decode()
    assert urlsafe != encoded
    again = _ok(
        http.post(
            f"/v1/artifacts/{artifact_id}:put", json={"mediaType": "image/png", "data": urlsafe}
        )
    )
    assert base64.b64decode(again["data"]) == data


@pytest.mark.parametrize(
    ("artifact_id", "request_body", "field"),
    [
        ("no-content", {"mediaType": "text/plain"}, "artifact.content"),
        ("bad-type", {"mediaType": "not a type", "text": "x"}, "artifact.media_type"),
        ("Bad_Name", {"mediaType": "text/plain", "text": "x"}, "artifact.name"),
        (
            "too-big",
            {"mediaType": "text/plain", "text": "a" * (2 * 1024 * 1024 + 1)},
            "artifact.text",
        ),
    ],
)
def test_put_artifact_violations(
    http: httpx.Client, artifact_id: str, request_body: dict[str, Any], field: str
) -> None:
    response = http.post(f"/v1/artifacts/{artifact_id}:put", json=request_body)
    assert _violations(_service_error(response, 400, 3)) == [field]


def test_get_artifact(http: httpx.Client) -> None:
    artifact_id = _uid("doc")
    for text in ("one", "two"):
        _ok(
            http.post(
                f"/v1/artifacts/{artifact_id}:put", json={"mediaType": "text/plain", "text": text}
            )
        )
    latest = _ok(http.get(f"/v1/artifacts/{artifact_id}"))
    assert (latest["version"], latest["text"]) == ("2", "two")
    first = _ok(http.get(f"/v1/artifacts/{artifact_id}", params={"version": "1"}))
    assert (first["version"], first["text"]) == ("1", "one")
    _service_error(http.get(f"/v1/artifacts/{artifact_id}", params={"version": 9}), 404, 5)
    missing = _service_error(http.get(f"/v1/artifacts/{_uid('nobody')}"), 404, 5)
    assert _detail(missing, RESOURCE_INFO)["resourceType"] == "agentmesh.dev/Artifact"


def test_list_artifacts(http: httpx.Client) -> None:
    session = f"sessions/{_create_session(http)}"
    ids = sorted(_uid("art") for _ in range(3))
    for index, artifact_id in enumerate(ids):
        media_type = "image/png" if index == 2 else "text/markdown"
        body: dict[str, Any] = {"mediaType": media_type, "session": session}
        body |= {"data": "AAE="} if index == 2 else {"text": f"doc {index}"}
        _ok(http.post(f"/v1/artifacts/{artifact_id}:put", json=body))
    _ok(
        http.post(
            f"/v1/artifacts/{ids[0]}:put",
            json={"mediaType": "text/markdown", "text": "v2", "session": session},
        )
    )

    listed = _ok(http.get("/v1/artifacts", params={"filter": f'session = "{session}"'}))
    assert listed.keys() == {"artifacts", "nextPageToken"}
    artifacts = listed["artifacts"]
    assert [a["name"] for a in artifacts] == [f"artifacts/{i}" for i in ids]  # by name
    assert [a["version"] for a in artifacts] == ["2", "1", "1"]  # latest of each
    assert all("text" not in a and "data" not in a for a in artifacts)  # content omitted
    for artifact in artifacts:
        _has_keys(artifact, ARTIFACT_KEYS)

    images = _ok(
        http.get(
            "/v1/artifacts",
            params={"filter": f'session = "{session}" AND media_type = "image/png"'},
        )
    )
    assert [a["name"] for a in images["artifacts"]] == [f"artifacts/{ids[2]}"]

    page = _ok(
        http.get("/v1/artifacts", params={"filter": f'session = "{session}"', "pageSize": 2})
    )
    assert len(page["artifacts"]) == 2
    rest = _ok(
        http.get(
            "/v1/artifacts",
            params={
                "filter": f'session = "{session}"',
                "pageSize": 2,
                "pageToken": page["nextPageToken"],
            },
        )
    )
    assert [a["name"] for a in rest["artifacts"]] == [f"artifacts/{ids[2]}"]
    assert rest["nextPageToken"] == ""

    bad = http.get("/v1/artifacts", params={"filter": 'name = "x"'})
    assert _violations(_service_error(bad, 400, 3)) == ["filter"]


def test_list_artifact_versions(http: httpx.Client) -> None:
    artifact_id = _uid("doc")
    for text in ("one", "two", "three"):
        _ok(
            http.post(
                f"/v1/artifacts/{artifact_id}:put", json={"mediaType": "text/plain", "text": text}
            )
        )
    body = _ok(http.get(f"/v1/artifacts/{artifact_id}:versions"))
    assert body.keys() == {"artifacts", "nextPageToken"}
    assert [a["version"] for a in body["artifacts"]] == ["3", "2", "1"]  # newest first
    assert [a["sizeBytes"] for a in body["artifacts"]] == ["5", "3", "3"]
    assert all("text" not in a for a in body["artifacts"])

    page = _ok(http.get(f"/v1/artifacts/{artifact_id}:versions", params={"pageSize": 2}))
    assert [a["version"] for a in page["artifacts"]] == ["3", "2"]
    rest = _ok(
        http.get(
            f"/v1/artifacts/{artifact_id}:versions",
            params={"pageSize": 2, "pageToken": page["nextPageToken"]},
        )
    )
    assert [a["version"] for a in rest["artifacts"]] == ["1"]
    _service_error(http.get(f"/v1/artifacts/{_uid('nobody')}:versions"), 404, 5)


def test_delete_artifact(http: httpx.Client) -> None:
    artifact_id = _uid("tmp")
    for text in ("one", "two"):
        _ok(
            http.post(
                f"/v1/artifacts/{artifact_id}:put", json={"mediaType": "text/plain", "text": text}
            )
        )
    deleted = http.delete(f"/v1/artifacts/{artifact_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {}
    _service_error(http.get(f"/v1/artifacts/{artifact_id}"), 404, 5)
    _service_error(http.get(f"/v1/artifacts/{artifact_id}", params={"version": 1}), 404, 5)
    _service_error(http.get(f"/v1/artifacts/{artifact_id}:versions"), 404, 5)
    _service_error(http.delete(f"/v1/artifacts/{artifact_id}"), 404, 5)
    assert http.delete(f"/v1/artifacts/{artifact_id}", params={"allowMissing": "true"}).is_success

    # A new put starts again at version 1.
    again = _ok(
        http.post(f"/v1/artifacts/{artifact_id}:put", json={"mediaType": "text/plain", "text": "x"})
    )
    assert again["version"] == "1"


# -------------------------------------------------------------------- working memory


def test_get_working_memory(http: httpx.Client) -> None:
    session_id = _create_session(http)
    empty = _ok(http.get(f"/v1/sessions/{session_id}/workingMemory"))
    assert empty == {"name": f"sessions/{session_id}/workingMemory", "values": {}}
    _service_error(http.get(f"/v1/sessions/{_uid('nobody')}/workingMemory"), 404, 5)
    # Only the annotated path exists.
    _error(http.get(f"/v1/sessions/{session_id}/workingmemory"), 404, 5)


def test_update_working_memory_merges(http: httpx.Client) -> None:
    session_id = _create_session(http)
    path = f"/v1/sessions/{session_id}/workingMemory"
    values = {
        "step": "choose-hotel",
        "candidates": ["alfama-inn", "baixa-suites"],
        "budget": {"max": 150, "currency": "EUR"},
        "confirmed": False,
        "note": None,
    }
    first = _ok(http.patch(path, json={"workingMemory": {"values": values}, "ttl": "3600s"}))
    assert first["name"] == f"sessions/{session_id}/workingMemory"
    assert first["values"] == values  # google.protobuf.Value is plain JSON
    updated_at = _assert_timestamp(first["updateTime"])
    ttl = (_assert_timestamp(first["expireTime"]) - updated_at).total_seconds()
    assert ttl == pytest.approx(3600, abs=1)

    merged = _ok(
        http.patch(
            path,
            json={
                "workingMemory": {"values": {"step": "book", "choice": "alfama-inn"}},
                "removeKeys": ["candidates", "never-set"],
            },
        )
    )
    expected = {
        "step": "book",
        "choice": "alfama-inn",
        "budget": {"max": 150, "currency": "EUR"},
        "confirmed": False,
        "note": None,
    }
    assert merged["values"] == expected
    assert _ok(http.get(path))["values"] == expected

    # A key both set and removed is removed (removal comes after the merge).
    both = _ok(
        http.patch(path, json={"workingMemory": {"values": {"step": "x"}}, "removeKeys": ["step"]})
    )
    assert "step" not in both["values"]

    violations = http.patch(path, json={"workingMemory": {"values": {"bad key!": 1}}, "ttl": "0s"})
    assert set(_violations(_service_error(violations, 400, 3))) == {
        'working_memory.values["bad key!"]',
        "ttl",
    }
    too_large = http.patch(path, json={"workingMemory": {"values": {"big": "x" * (64 * 1024 + 1)}}})
    assert _violations(_service_error(too_large, 400, 3)) == ['working_memory.values["big"]']
    missing = http.patch(
        f"/v1/sessions/{_uid('nobody')}/workingMemory",
        json={"workingMemory": {"values": {"a": 1}}},
    )
    _service_error(missing, 404, 5)
    assert "bad key!" not in _ok(http.get(path))["values"]


def test_update_working_memory_over_the_key_limit_is_429(http: httpx.Client) -> None:
    """The dev servers' default limit, AGENTMESH_MEMORY_WORKING_MAX_KEYS=1000."""
    session_id = _create_session(http)
    path = f"/v1/sessions/{session_id}/workingMemory"
    full = {f"k{i}": i for i in range(1000)}
    assert len(_ok(http.patch(path, json={"workingMemory": {"values": full}}))["values"]) == 1000

    refused = http.patch(path, json={"workingMemory": {"values": {"one-more": 1}}})
    body = _service_error(refused, 429, 8)
    info = _detail(body, ERROR_INFO)
    assert info["reason"] == "WORKING_MEMORY_LIMIT_EXCEEDED"
    name = f"sessions/{session_id}/workingMemory"
    assert info["metadata"] == {
        "resource_name": name,
        "limit_name": "keys",
        "limit": "1000",
        "projected": "1001",
    }
    (violation,) = _detail(body, QUOTA_FAILURE)["violations"]
    assert (violation["subject"], violation["quotaValue"]) == (name, "1000")
    assert RETRY_INFO not in [d["@type"] for d in body["details"]]
    assert "one-more" not in _ok(http.get(path))["values"]

    # Making room works; a request that alone is over the limit is the client's 400.
    swapped = http.patch(
        path, json={"workingMemory": {"values": {"one-more": 1}}, "removeKeys": ["k0"]}
    )
    assert "one-more" in _ok(swapped)["values"]
    alone = {f"k{i}": i for i in range(1001)}
    too_many = http.patch(
        f"/v1/sessions/{_create_session(http)}/workingMemory",
        json={"workingMemory": {"values": alone}},
    )
    assert _violations(_service_error(too_many, 400, 3)) == ["working_memory.values"]


# ------------------------------------------------------------------- edge behaviour


def test_memory_routes_need_a_token(anonymous_http: httpx.Client) -> None:
    for response in (
        anonymous_http.get("/v1/sessions"),
        anonymous_http.post("/v1/memories:search", json={"text": "x"}),
        anonymous_http.get("/v1/artifacts/anything"),
    ):
        body = _service_error(response, 401, 16)
        assert _reason(body) == "MISSING_TOKEN"


def test_checkpoint_and_store_rpcs_are_not_json_routes(http: httpx.Client) -> None:
    for method in ("GetCheckpoint", "PutStoreItem"):
        response = http.post(f"/agentmesh.v1.MemoryService/{method}", json={})
        _error(response, 404, 5)


def test_unknown_query_parameter_is_400(http: httpx.Client) -> None:
    body = _error(http.get("/v1/memories", params={"view": "FULL"}), 400, 3)
    assert "view" in body["message"]
