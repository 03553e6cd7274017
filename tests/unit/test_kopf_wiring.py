"""The kopf wiring: only watch-event handlers, so kopf's change detection can be off."""

from __future__ import annotations

import kopf

from modeldeploy import handlers


def test_only_event_handlers_are_registered_so_no_diff_base_is_needed() -> None:
    registry = kopf.get_default_registry()
    # Change handlers (on.create/update/resume/delete) and daemons or timers would read the
    # diff base that NoDiffBase never keeps, and would need finalizers or progress annotations.
    assert not list(registry._changing.get_all_handlers())
    assert not list(registry._spawning.get_all_handlers())
    assert len(list(registry._watching.get_all_handlers())) >= 2  # parent and children


def test_no_diff_base_copies_nothing_and_remembers_nothing() -> None:
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "m"}, "spec": {"replicas": 3}})
    assert storage.build(body=body) == {}
    storage.store(body=body, patch=kopf.Patch(), essence=kopf.BodyEssence(spec={"x": 1}))
    assert storage.fetch(body=body) is None
