"""Delayed re-checks: one pending per resource, growing delays, none once settled."""

from __future__ import annotations

import threading

from modeldeploy.requeue import Requeue


def test_one_pending_recheck_per_key_with_growing_delay() -> None:
    requeue = Requeue(first=0.05, longest=0.15)
    fired = threading.Event()
    assert requeue.schedule("a", fired.set) == 0.05
    assert requeue.schedule("a", fired.set) == 0.0, "already pending"
    assert fired.wait(2)
    assert requeue.pending() == 0
    assert requeue.schedule("a", lambda: None) == 0.1
    requeue.stop()
    assert requeue.schedule("b", lambda: None) == 0.05
    requeue.stop()


def test_backoff_is_capped() -> None:
    requeue = Requeue(first=1.0, longest=3.0)
    delays = []
    for _ in range(4):
        delays.append(requeue.schedule("k", lambda: None))
        requeue.stop()  # cancels the timer but keeps the backoff
    assert delays == [1.0, 2.0, 3.0, 3.0]


def test_settle_cancels_and_resets() -> None:
    requeue = Requeue(first=0.05, longest=1.0)
    fired = threading.Event()
    requeue.schedule("k", fired.set)
    requeue.settle("k")
    assert not fired.wait(0.2)
    assert requeue.schedule("k", lambda: None) == 0.05
    requeue.stop()
