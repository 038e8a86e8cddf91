"""Memory settings: loaded by the core loader under ``AGENTMESH_MEMORY_``, defaults,
range checks naming the variables."""

from __future__ import annotations

import pytest

from agentmesh.core.settings import ConfigError, Settings
from agentmesh.memory.settings import MemorySettings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    memory = MemorySettings.from_env({})
    assert (memory.embedder, memory.embedding_dim) == ("hash", 384)
    assert (memory.working_max_keys, memory.working_max_bytes) == (1000, 1 << 20)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTMESH_MEMORY_EMBEDDER", "word2vec"),
        ("AGENTMESH_MEMORY_HNSW_M", "1"),
        ("AGENTMESH_MEMORY_MERGE_SIMILARITY", "0"),
        ("AGENTMESH_MEMORY_WORKING_MAX_KEYS", "0"),
        ("AGENTMESH_MEMORY_WORKING_MAX_BYTES", "-1"),
        ("AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S", "-1"),
        ("AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S", str(10 * 365 * 86_400 + 1)),
        ("AGENTMESH_MEMORY_JANITOR_INTERVAL_S", "-0.5"),
        ("AGENTMESH_MEMORY_JANITOR_INTERVAL_S", "86401"),
        ("AGENTMESH_MEMORY_JANITOR_BATCH_SIZE", "0"),
        ("AGENTMESH_MEMORY_JANITOR_BATCH_SIZE", "100001"),
    ],
)
def test_out_of_range_values_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        MemorySettings.from_env({variable: value})


def test_memory_variables_belong_to_the_memory_settings_only() -> None:
    environ = {"AGENTMESH_MEMORY_EMBEDDER": "minilm", "AGENTMESH_GRPC_PORT": "7000"}
    assert MemorySettings.from_env(environ).embedder == "minilm"
    shared = Settings.from_env(environ, service="memory")
    assert shared.grpc_port == 7000
    assert not any(name.startswith("memory_") and name != "memory_addr" for name in vars(shared))


def test_session_purge_window_defaults_to_a_week_and_0_deletes_at_once() -> None:
    assert MemorySettings.from_env({}).session_purge_after_s == 7 * 86_400
    at_once = MemorySettings.from_env({"AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S": "0"})
    assert at_once.session_purge_after_s == 0

    with pytest.raises(ConfigError) as raised:
        MemorySettings.from_env({"AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S": "a week"})
    assert "AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S='a week': expected an integer" in str(
        raised.value
    )


def test_janitor_runs_every_minute_by_default_and_0_disables_it() -> None:
    defaults = MemorySettings.from_env({})
    assert defaults.janitor_interval_s == 60.0
    assert defaults.janitor_batch_size == 1000

    tuned = MemorySettings.from_env(
        {"AGENTMESH_MEMORY_JANITOR_INTERVAL_S": "0.25", "AGENTMESH_MEMORY_JANITOR_BATCH_SIZE": "1"}
    )
    assert (tuned.janitor_interval_s, tuned.janitor_batch_size) == (0.25, 1)
    off = MemorySettings.from_env({"AGENTMESH_MEMORY_JANITOR_INTERVAL_S": "0"})
    assert off.janitor_interval_s == 0.0
