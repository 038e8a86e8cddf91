"""The prompt Redis consumer copies a private method of Dramatiq's Redis consumer
(``_RedisConsumer.__next__``); this fails loudly when Dramatiq changes, so the copy is
checked against the new version instead of silently diverging from it."""

from __future__ import annotations

import inspect

import dramatiq
from dramatiq.brokers.redis import _RedisConsumer

from agentmesh.job.broker import PromptRedisBroker, _PromptConsumer

COPIED_FROM = "2.2.1"


def test_dramatiq_is_the_version_the_prompt_consumer_was_copied_from() -> None:
    assert dramatiq.__version__ == COPIED_FROM, (
        f"Dramatiq is {dramatiq.__version__}: compare _RedisConsumer.__next__ with"
        " agentmesh.job.broker._PromptConsumer.__next__, port its changes, then update"
        " COPIED_FROM"
    )
    source = inspect.getsource(_RedisConsumer.__next__)
    for piece in ("self.message_cache.pop(0)", "do_fetch", "compute_backoff", "ConnectionClosed"):
        assert piece in source


def test_the_broker_uses_the_prompt_consumer() -> None:
    broker = PromptRedisBroker(url="redis://127.0.0.1:1/0", namespace="guard")
    try:
        assert broker.consumer_class is _PromptConsumer
    finally:
        broker.close()
