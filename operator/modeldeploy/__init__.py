"""modeldeploy: a Kubernetes operator that serves scikit-learn models.

Layers, each importing only downward: ``api`` (typed resource) -> ``render`` / ``status``
(pure) -> ``kube`` (the Kubernetes API) -> ``reconcile`` (orchestration) -> ``handlers``
(kopf wiring) -> ``__main__`` (entry point).
"""

__version__ = "0.1.0"
