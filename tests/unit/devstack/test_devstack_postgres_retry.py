"""A PostgreSQL program whose child is killed by a signal at once (a fork that crashed
before its exec) is run again; a plain failure is not."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agentmesh.devstack.postgres import EmbeddedPostgres, PostgresError


def _program(bin_dir: Path, body: str) -> None:
    path = bin_dir / "prog"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def pg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EmbeddedPostgres:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setattr(EmbeddedPostgres, "bin_dir", property(lambda self: bin_dir))
    return EmbeddedPostgres(tmp_path / "data")


def test_a_child_killed_by_a_signal_runs_again(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    _program(
        pg.bin_dir,
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; kill -SEGV $$; fi\necho started\n',
    )
    assert pg._run(["prog"], timeout_s=10, what="prog", as_server_user=False) == "started\n"


def test_a_failure_is_not_retried(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    count = tmp_path / "count"
    _program(pg.bin_dir, f'echo run >> "{count}"\necho bad; exit 3\n')
    with pytest.raises(PostgresError, match="exit 3"):
        pg._run(["prog"], timeout_s=10, what="prog", as_server_user=False)
    assert count.read_text().count("run") == 1


def test_a_child_always_killed_fails_after_the_retries(pg: EmbeddedPostgres) -> None:
    _program(pg.bin_dir, "kill -SEGV $$\n")
    with pytest.raises(PostgresError, match="exit -11"):
        pg._run(["prog"], timeout_s=10, what="prog", as_server_user=False)
