"""Fixtures shared by the dev-stack launcher tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh.devstack import paths


@pytest.fixture(scope="session")
def descriptor_set() -> Path:
    """The real descriptor set `make gen` writes; its absence is a failure, not a skip."""
    path = paths.descriptor_set()
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make gen` first")
    return path


@pytest.fixture
def pg_root() -> Iterator[Path]:
    """A fresh directory for anything that runs PostgreSQL, outside pytest's basetemp.

    As root, PostgreSQL runs as another OS user that must traverse every parent of its
    data dir. pytest resets /tmp/pytest-of-<user> to 0700 whenever a pytest session
    starts, and other sessions run concurrently on the shared checkout, so a data dir
    under tmp_path can become unreachable mid-test. /tmp itself never changes mode.
    """
    root = Path(tempfile.mkdtemp(prefix="agentmesh-test-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
