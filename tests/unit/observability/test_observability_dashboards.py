"""The committed dashboards are what the code generates, and every query is portable."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agentmesh.observability.dashboards import DASHBOARDS, main, panel_queries, render_all

DASHBOARDS_DIR = Path(__file__).resolve().parents[3] / "observability" / "dashboards"


def test_committed_dashboards_match_the_code() -> None:
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS_DIR.glob("*.json")}
    generated = render_all()
    assert sorted(committed) == sorted(generated), "run `make dashboards` and commit the result"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is stale: run `make dashboards` and commit it"


def test_the_command_writes_every_dashboard_and_drops_stale_files(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("{}")
    assert main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{s}.json" for s in DASHBOARDS)


def test_dashboards_are_importable_anywhere() -> None:
    uids = set()
    for text in render_all().values():
        document = json.loads(text)
        uids.add(document["uid"])
        variables = [v["name"] for v in document["templating"]["list"]]
        assert variables == ["datasource"], document["title"]
        panels = [p for p in document["panels"] if p["type"] != "row"]
        assert panels, document["title"]
        ids = [p["id"] for p in document["panels"]]
        assert len(set(ids)) == len(ids), document["title"]
        for panel in panels:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
    assert len(uids) == len(DASHBOARDS)


def test_queries_use_no_placeholder_but_the_rate_window() -> None:
    """Only `$__rate_interval` appears in expressions, so the live test can evaluate them."""
    queries = [
        (title, expr)
        for text in render_all().values()
        for title, expr in panel_queries(json.loads(text))
    ]
    assert len(queries) >= 50
    for title, expr in queries:
        assert re.sub(r"\$__rate_interval", "", expr).count("$") == 0, (title, expr)
        assert expr.count("(") == expr.count(")"), (title, expr)
