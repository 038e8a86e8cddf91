"""The contract's compatibility gate on a real git history with the real buf: a
compatible change passes, an incompatible one fails (uncommitted and committed), a break
named in contract/breaking-allowed passes, and a shallow clone fails loudly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentmesh.devstack import paths
from agentmesh.devstack.contract_gate import run_gate

BUF = str(Path(sys.executable).parent / "buf")
FIELD = "  int32 merged_count = 3;"


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(paths.repo_root() / "buf.yaml", root / "buf.yaml")
    shutil.copytree(paths.repo_root() / "proto", root / "proto")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "gate@example.invalid")
    git(root, "config", "user.name", "gate")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "contract")
    return root


def memory_proto(root: Path) -> Path:
    return root / "proto" / "agentmesh" / "v1" / "memory.proto"


def edit(root: Path, old: str, new: str) -> None:
    path = memory_proto(root)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_compatible_change_passes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(repo, FIELD, FIELD + "\n  // Added later.\n  int32 skipped_count = 4;")
    assert run_gate(repo, BUF) == 0  # uncommitted, against HEAD
    git(repo, "commit", "-qam", "add a field")
    assert run_gate(repo, BUF) == 0  # committed, against its parent
    assert "compatible" in capsys.readouterr().out


def test_a_deleted_field_fails_before_and_after_commit(
    repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    edit(repo, FIELD, "  reserved 3;")
    assert run_gate(repo, BUF) == 1
    out, err = capfd.readouterr()
    assert 'field "3" with name "merged_count"' in out + err
    git(repo, "commit", "-qam", "drop a field")
    assert run_gate(repo, BUF) == 1
    # Named as a deliberate break: the gate lets that change through.
    (repo / "contract").mkdir()
    commit = git(repo, "rev-parse", "HEAD")
    (repo / "contract" / "breaking-allowed").write_text(f"{commit}  # merged_count unused\n")
    assert run_gate(repo, BUF) == 0
    assert "skipped" in capfd.readouterr().out


def test_a_shallow_clone_fails_loudly(repo: Path, tmp_path: Path) -> None:
    edit(repo, FIELD, FIELD + "\n  int32 skipped_count = 4;")
    git(repo, "commit", "-qam", "second")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    assert run_gate(shallow, BUF) == 2
