"""The model pods as a pass reads them: why they do not start, and their /metrics.

Read only when a decision needs them: a rollout that is not done (to explain it), the canary
analysis at the end of its interval, the drift check at its own interval. Lists come from the
API server's watch cache; metrics from each ready pod's probe listener, concurrently.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modeldeploy import canary, render, scrape, status
from modeldeploy.kube import Kube

logger = logging.getLogger("modeldeploy.pods")

Obj = dict[str, Any]


def failure(kube: Kube, owner: render.Owner, track: str | None = None) -> status.PodFailure | None:
    """Why the resource's pods (of one track, if given) cannot start, if a pod says so."""
    selector = render.selector_string(owner)
    if track is not None:
        selector += f",{canary.TRACK_LABEL}={track}"
    return status.summarize_pod_failure(kube.list_pods(owner.namespace, selector))


def _ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


class PodMetrics:
    """The /metrics texts of a resource's ready pods, read concurrently at most once per pass
    and only when asked for: the canary analysis and the drift check, each on its own
    interval, judge the same reading when both are due."""

    def __init__(self, kube: Kube, owner: render.Owner, io: ThreadPoolExecutor) -> None:
        self._kube, self._owner, self._io = kube, owner, io
        self._texts: list[tuple[str, str]] | None = None

    def targets(self) -> list[tuple[str, str]]:
        """(track, metrics URL) of every ready pod of the resource."""
        pods = self._kube.list_pods(
            self._owner.namespace, render.selector_string(self._owner), limit=500
        )
        return [
            (
                ((pod.get("metadata") or {}).get("labels") or {}).get(
                    canary.TRACK_LABEL, canary.STABLE
                ),
                f"http://{pod['status']['podIP']}:{render.HEALTH_PORT}/metrics",
            )
            for pod in pods
            if _ready(pod) and (pod.get("status") or {}).get("podIP")
        ]

    def texts(self) -> list[tuple[str, str]]:
        """(track, metrics text) of each ready pod that answered (the others count as silent:
        the canary's gates need ``minRequests`` before they judge)."""
        if self._texts is None:

            def read(target: tuple[str, str]) -> tuple[str, str | None]:
                track, url = target
                try:
                    return track, scrape.fetch(url)
                except (OSError, ValueError) as error:
                    logger.info("cannot read the metrics at %s: %s", url, error)
                    return track, None

            found = self._io.map(read, self.targets())
            self._texts = [(track, text) for track, text in found if text is not None]
        return self._texts

    def readings(self) -> dict[str, scrape.Counters]:
        """Both versions' counters, summed over their ready pods (the canary analysis)."""
        found = [(track, scrape.counters(text)) for track, text in self.texts()]
        return {
            track: scrape.total(counters for t, counters in found if t == track)
            for track in (canary.STABLE, canary.CANARY)
        }

    def drift_figures(self) -> list[dict[str, float]]:
        """Each pod's PSI figures (the drift check)."""
        return [scrape.drift_figures(text) for _, text in self.texts()]
