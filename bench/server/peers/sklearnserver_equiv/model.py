"""A `kserve.Model` that loads and predicts the way KServe's sklearnserver does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import joblib
from kserve import Model
from kserve.errors import InferenceError, ModelMissingError
from kserve.utils.utils import get_predict_input, get_predict_response
from kserve_storage import Storage

MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")
PREDICT_PROBA_ENV = "PREDICT_PROBA"


class SKLearnModel(Model):
    """One scikit-learn estimator read from a directory holding exactly one model file."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.name = name
        self.model_dir = model_dir
        self.ready = False

    def load(self) -> bool:
        local_dir = Path(Storage.download(self.model_dir))
        found = sorted(
            p for p in local_dir.iterdir() if p.is_file() and p.name.endswith(MODEL_SUFFIXES)
        )
        if not found:
            raise ModelMissingError(local_dir)
        if len(found) > 1:
            raise RuntimeError(f"only one model file is allowed in {local_dir}, found {found}")
        self._model = joblib.load(found[0])
        self.ready = True
        return self.ready

    # Synchronous on purpose, like sklearnserver's: KServe runs it on its event loop.
    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        try:
            instances = get_predict_input(payload)
            want_proba = os.environ.get(PREDICT_PROBA_ENV, "false").lower() == "true"
            if want_proba and hasattr(self._model, "predict_proba"):
                result = self._model.predict_proba(instances)
            else:
                result = self._model.predict(instances)
            return get_predict_response(payload, result, self.name)
        except Exception as exc:
            raise InferenceError(str(exc)) from exc
