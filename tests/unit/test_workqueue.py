"""The work queue: one pass per key at a time, nothing lost, backoff with jitter and a cap."""

from __future__ import annotations

import asyncio
import itertools
import random

from modeldeploy.workqueue import Backoff, Result, WorkQueue


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first=1.0, cap=60.0, jitter=0.2)
    rng = random.Random(7)  # noqa: S311 - jitter, not cryptography
    delays = [backoff.delay(n, rng) for n in range(1, 12)]
    for n, delay in enumerate(delays[:6], start=1):
        assert 0.8 * 2 ** (n - 1) <= delay <= 1.2 * 2 ** (n - 1)
    assert all(delay <= 60.0 for delay in delays)
    assert delays[-1] >= 48.0
    spread = {round(backoff.delay(3, rng), 6) for _ in range(20)}
    assert len(spread) > 10, "jittered: retries of many objects do not synchronise"


def test_a_key_added_while_processed_runs_once_more_and_never_twice_at_once() -> None:
    async def scenario() -> list[str]:
        log: list[str] = []
        running: set[str] = set()
        release = asyncio.Event()

        async def process(key: str) -> Result:
            assert key not in running, "processed twice at once"
            running.add(key)
            log.append(key)
            if len(log) == 1:
                await release.wait()
            running.discard(key)
            return Result()

        queue: WorkQueue[str] = WorkQueue(process, workers=3)
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.01)
        for _ in range(5):
            queue.add("a")  # dirty while processed: collapses into one more pass
        release.set()
        await asyncio.sleep(0.05)
        await queue.stop()
        return log

    assert asyncio.run(scenario()) == ["a", "a"]


def test_failures_are_retried_with_growing_delays_and_success_resets_them() -> None:
    async def scenario() -> tuple[list[float], int]:
        loop = asyncio.get_running_loop()
        times: list[float] = []

        async def process(_: str) -> Result:
            times.append(loop.time())
            return Result(failed=len(times) < 4)

        queue: WorkQueue[str] = WorkQueue(
            process, workers=1, backoff=Backoff(first=0.05, cap=1.0, jitter=0.0)
        )
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.6)
        await queue.stop()
        return [b - a for a, b in itertools.pairwise(times)], queue.failures("a")

    gaps, failures = asyncio.run(scenario())
    assert len(gaps) == 3
    assert gaps[0] < gaps[1] < gaps[2]
    assert abs(gaps[0] - 0.05) < 0.04
    assert abs(gaps[2] - 0.2) < 0.08
    assert failures == 0


def test_requeue_after_keeps_the_earliest_due_time_and_forget_drops_it() -> None:
    async def scenario() -> tuple[list[str], float | None]:
        seen: list[str] = []

        async def process(key: str) -> Result:
            seen.append(key)
            return Result()

        queue: WorkQueue[str] = WorkQueue(process, workers=1)
        queue.start()
        queue.add_after("a", 0.05)
        queue.add_after("a", 10.0)  # later than pending: ignored
        queue.add_after("b", 10.0)
        delay_b = queue.delay_of("b")
        queue.forget("b")
        await asyncio.sleep(0.15)
        assert len(queue) == 0
        await queue.stop()
        return seen, delay_b

    seen, delay_b = asyncio.run(scenario())
    assert seen == ["a"]
    assert delay_b is not None
    assert 9.0 < delay_b <= 10.0


def test_a_permanent_refusal_waits_at_least_its_floor() -> None:
    async def scenario() -> float | None:
        async def process(_: str) -> Result:
            return Result(failed=True, retry_at_least=15.0)

        queue: WorkQueue[str] = WorkQueue(process, workers=1, backoff=Backoff(first=0.01))
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.05)
        delay = queue.delay_of("a")
        await queue.stop()
        return delay

    delay = asyncio.run(scenario())
    assert delay is not None
    assert 14.0 < delay <= 15.0
