"""The Prometheus rules pass promtool's checks and their unit tests, and each alert is
tested and documented. promtool is Debian's (`make obs-tools` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "observability" / "rules"
RULE_FILES = sorted(RULES.glob("*.yml"))
RULE_TESTS = sorted((RULES / "tests").glob("*.test.yml"))


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make obs-tools` (Debian's prometheus package)"
    return promtool


def _rules(kind: str) -> list[str]:
    names = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names += [rule[kind] for rule in group["rules"] if kind in rule]
    return names


def test_rules_pass_promtool_check() -> None:
    assert RULE_FILES, RULES
    result = subprocess.run(
        [_promtool(), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    result = subprocess.run(
        [_promtool(), "test", "rules", *(p.name for p in RULE_TESTS)],
        cwd=RULES / "tests",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_fires_in_a_unit_test() -> None:
    """Each alert has a test case that expects it to fire (a non-empty exp_alerts)."""
    fired = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    alerts = _rules("alert")
    assert len(alerts) == len(set(alerts))
    assert sorted(set(alerts) - fired) == []


def test_every_alert_has_a_runbook_section() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in operations.splitlines()
        if line.startswith("#")
    }
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                runbook = rule["annotations"]["runbook"]
                assert runbook == f"docs/operations.md#{rule['alert'].lower()}", rule["alert"]
                assert rule["alert"].lower() in headings, f"no section for {rule['alert']}"
                assert rule["labels"]["severity"] in {"critical", "warning"}
