"""Loading a model file into a runtime: verify the bytes first, then deserialize only those bytes.

The digest is checked on the bytes in memory and the same bytes are deserialized, so a file swapped
between the check and the load is never served. Every failure is a ModelLoadError with a one-line
reason that tells the user what to change.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import platform
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.exceptions import InconsistentVersionWarning

from modelserver.core import digest
from modelserver.core.errors import ModelLoadError
from modelserver.runtimes import forest, linear, runtime

_ZIP_MAGIC = b"PK\x03\x04"
_FILE_NAMES = {"joblib": ("model.joblib", "model.pkl", "model.pickle"), "skops": ("model.skops",)}


def prepare(model_format: str) -> None:
    """Imports what loading `model_format` needs, so that forked workers share it."""
    if model_format == "skops":
        import skops.io  # noqa: F401, PLC0415 - imported for its side effect of being loaded.


def resolve_path(uri: str, model_format: str) -> Path:
    """The local file a model URI names: a path, `file://`, or a directory holding the model."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else uri)
    else:
        raise ModelLoadError(
            f"cannot serve {uri!r} directly: the server reads local files; download it first with "
            "`python -m modelserver fetch --model-uri URI --dest FILE` and serve file://FILE"
        )
    if path.is_dir():
        return _model_file_in(path, model_format)
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist (from model URI {uri!r})")
    return path


def _model_file_in(folder: Path, model_format: str) -> Path:
    for name in _FILE_NAMES[model_format]:
        if (folder / name).is_file():
            return folder / name
    files = [
        entry for entry in folder.iterdir() if entry.is_file() and not entry.name.startswith(".")
    ]
    if len(files) == 1:
        return files[0]
    raise ModelLoadError(
        f"model directory {folder} holds {len(files)} files and none is named "
        f"{' or '.join(_FILE_NAMES[model_format])}; point the model URI at the file itself"
    )


def read_verified(path: Path, expected_digest: str | None) -> tuple[bytes, str]:
    """The file's bytes and their sha256 hex; refused when they differ from the pinned digest."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelLoadError(f"cannot read model file {path}: {error.strerror or error}") from None
    actual = hashlib.sha256(data).hexdigest()
    if expected_digest is not None:
        try:
            expected = digest.parse(expected_digest)
        except ValueError as error:
            raise ModelLoadError(str(error)) from None
        if expected != actual:
            raise ModelLoadError(digest.mismatch_message(str(path), expected, actual))
    return data, actual


def deserialize(data: bytes, model_format: str, source: str, trusted: Sequence[str] = ()) -> Any:
    """Turns verified bytes into an estimator; refuses version skew and untrusted skops types."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        if model_format == "skops":
            estimator = _from_skops(data, source, trusted)
        else:
            estimator = _from_joblib(data, source)
    for warning in caught:
        message = warning.message
        if isinstance(message, InconsistentVersionWarning):
            raise ModelLoadError(
                f"{source} was saved with scikit-learn {message.original_sklearn_version} but this "
                f"server runs scikit-learn {message.current_sklearn_version}; predictions could be "
                "wrong, so it is not served: save the model with the server's version or use an "
                "image with the model's version"
            )
    if not callable(getattr(estimator, "predict", None)):
        raise ModelLoadError(
            f"{source} holds a {type(estimator).__name__}, which has no predict method"
        )
    return estimator


def _from_joblib(data: bytes, source: str) -> Any:
    if data.startswith(_ZIP_MAGIC):
        raise ModelLoadError(
            f"{source} looks like a skops file (a zip archive), not joblib: set the model format "
            "to skops"
        )
    try:
        return joblib.load(io.BytesIO(data))
    except ModuleNotFoundError as error:
        raise ModelLoadError(
            f"{source} needs the Python module {error.name!r}, which this server does not have"
        ) from None
    except Exception as error:
        raise ModelLoadError(
            f"{source} could not be loaded as joblib ({type(error).__name__}: {error}); is it a "
            "joblib file saved with a compatible scikit-learn version?"
        ) from None


def _from_skops(data: bytes, source: str, trusted: Sequence[str]) -> Any:
    import skops.io  # noqa: PLC0415 - takes most of a second; joblib models never need it.

    if not data.startswith(_ZIP_MAGIC):
        raise ModelLoadError(
            f"{source} is not a skops file (not a zip archive): set the model format to joblib "
            "if it was saved with joblib"
        )
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as error:
        raise ModelLoadError(
            f"{source} could not be read as skops ({type(error).__name__}: {error})"
        ) from None
    refused = sorted(set(untrusted) - set(trusted))
    if refused:
        raise ModelLoadError(
            f"{source} contains types that are not trusted: {', '.join(refused)}; it was not "
            "loaded. If you trust them, list them in MODEL_TRUSTED_TYPES (--trusted-types)"
        )
    try:
        return skops.io.loads(data, trusted=list(untrusted))
    except ModuleNotFoundError as error:
        raise ModelLoadError(
            f"{source} needs the Python module {error.name!r}, which this server does not have"
        ) from None
    except Exception as error:
        raise ModelLoadError(
            f"{source} could not be loaded as skops ({type(error).__name__}: {error})"
        ) from None


def library_versions(model_format: str) -> dict[str, str]:
    """The versions that decide whether a model loads and predicts the same as where it was made."""
    versions = {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }
    versions[model_format] = importlib.metadata.version(model_format)
    return versions


def load(
    uri: str, model_format: str, expected_digest: str | None, trusted: Sequence[str] = ()
) -> runtime.SklearnRuntime:
    """Loads, verifies and warms up the model at `uri`; ModelLoadError says why it cannot."""
    started = time.perf_counter()
    path = resolve_path(uri, model_format)
    data, sha256 = read_verified(path, expected_digest)
    estimator = deserialize(data, model_format, str(path), trusted)
    load_seconds = time.perf_counter() - started
    model_class, n_features, classes, classifier, methods = runtime.describe(estimator)
    dtypes, shapes = runtime.warm_up(estimator, n_features, methods)
    trees = forest.for_estimator(estimator)
    fast: runtime.FastPath | None = (
        trees if trees is not None and forest.verified(trees, estimator) else None
    )
    if fast is None:
        fast = _linear_path(estimator)
    info = runtime.ModelInfo(
        model_class=model_class,
        n_features=n_features,
        classes=classes,
        is_classifier=classifier,
        methods=methods,
        path=str(path),
        format=model_format,
        sha256=sha256,
        load_seconds=load_seconds,
        versions=library_versions(model_format),
        output_dtypes=dtypes,
        output_shapes=shapes,
        fast_path=fast is not None,
    )
    return runtime.SklearnRuntime(estimator, info, fast)


def _linear_path(estimator: Any) -> linear.LinearPath | None:
    """The verified fast path of a logistic regression (after scalers), or None."""
    path = linear.for_estimator(estimator)
    if path is None or not linear.verified(path, estimator):
        return None
    return path
