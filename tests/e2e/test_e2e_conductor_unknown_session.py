"""The Conductor answers through the mesh: an unknown session over JSON is a 404."""

from __future__ import annotations

import httpx


def test_watching_an_unknown_session_over_json_is_404(http: httpx.Client) -> None:
    response = http.get(f"/v1/sessions/s-unknown-{id(http)}:watch")
    assert response.status_code == 404
