"""Retry policy for calls to the classifier: predictions are pure functions of the upload, so a
call whose replica died (killed, OOM, node lost) is retried until the request's deadline. Saves
are never retried here: the store's request-id key makes a client's own retry safe instead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)
T = TypeVar("T")


async def within_deadline(
    call: Callable[[], Awaitable[T]], deadline: float, pause_s: float, on_retry: Callable[[], None]
) -> T:
    """``call()`` bounded by ``deadline`` (``time.perf_counter`` time), retried after ``pause_s`` when
    its replica dies. Raises ``asyncio.TimeoutError`` past the deadline, or the last replica error
    when no retry fits before it."""
    while True:
        try:
            return await asyncio.wait_for(call(), max(0.01, deadline - time.perf_counter()))
        except REPLICA_GONE:
            on_retry()
            if time.perf_counter() + pause_s >= deadline:
                raise
            await asyncio.sleep(pause_s)
