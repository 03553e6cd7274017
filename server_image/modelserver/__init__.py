"""modelserver: the small, fast scikit-learn model server of modeldeploy (KServe V1 and OIP V2)."""

__version__ = "0.1.0"
