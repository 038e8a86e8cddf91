"""Schemathesis hooks for the contract fuzzing of the JSON API (test_e2e_fuzz_json_api).

Loaded by the `st` process through SCHEMATHESIS_HOOKS; nothing here runs in pytest.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    """A QUERY request (the method Schemathesis probes as undeclared) gets a content type.

    Envoy knows QUERY (an HTTP method whose request carries its query in a typed body)
    and refuses one without a content type as malformed, 400, before any route is
    consulted; with one it reaches the routes and gets 405 like every other method a
    path does not take. The probe is about the 405, so it is sent well formed.
    """
    if case.method.upper() == "QUERY":
        headers = dict(case.headers or {})
        headers.setdefault("Content-Type", "application/json")
        case.headers = headers
