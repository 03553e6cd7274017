"""Turning JSON values into feature matrices and numpy outputs into JSON, shared by V1 and V2.

Conversion is done by numpy in one call, never by a Python loop over rows; the type checks look at
the dtype numpy inferred (strings give a unicode array, None an object array, ragged rows a
ValueError), so that a bad value is named instead of being silently coerced.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import orjson

from modelserver.core.errors import BadRequestError

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

# numpy dtype kind -> what the client sent, for error messages.
_KIND_NAMES = {"U": "a string", "S": "a string", "O": "null or a non-number", "b": "a boolean"}


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; BadRequestError names what is wrong with it."""
    if not body:
        raise BadRequestError("empty request body: expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequestError(f"malformed JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise BadRequestError(f"request body must be a JSON object, got {type(parsed).__name__}")
    return parsed


def to_array(data: object, field: str) -> np.ndarray:
    """Any nested list of numbers as a numpy array of the type numpy infers.

    A large list is converted in slices of about `SLICE_VALUES` values, and a thread other than
    the event loop's lets the loop run between slices: one `np.array` call on a 4096-row request
    holds the interpreter for milliseconds, during which the loop could answer nobody. Slices
    whose dtype is not numeric are left to one conversion of the whole list, so that the
    outcome (and the error named) is the same as without slicing.
    """
    if not isinstance(data, list):
        raise BadRequestError(f"{field!r} must be a list, got {_json_type(data)}")
    try:
        first = data[0] if data else None
        step = max(1, SLICE_VALUES // (len(first) if isinstance(first, list) and first else 1))
        if len(data) <= step:
            return np.array(data)
        return _sliced_array(data, step)
    except (ValueError, TypeError):
        raise BadRequestError(
            f"ragged {field!r}: every row must have the same number of values"
        ) from None


SLICE_VALUES = 32768


def _sliced_array(data: list[Any], step: int) -> np.ndarray:
    """`np.array(data)`, made slice by slice, yielding the interpreter between slices when off
    the main thread."""
    yielding = threading.current_thread() is not threading.main_thread()
    parts = []
    for start in range(0, len(data), step):
        part = np.array(data[start : start + step])
        if part.dtype.kind not in "biuf":
            return np.array(data)
        parts.append(part)
        if yielding:
            time.sleep(0)  # lets a waiting event loop take the interpreter
    return np.concatenate(parts)


def check_numeric(array: np.ndarray, field: str, *, allow_bool: bool = False) -> None:
    """Rejects strings, nulls, nested objects and (unless allowed) booleans."""
    kind = array.dtype.kind
    if kind in "iuf" or (allow_bool and kind == "b"):
        return
    what = _KIND_NAMES.get(kind, f"a value of type {array.dtype}")
    raise BadRequestError(
        f"non-numeric value in {field!r}: found {what}; all features must be numbers"
    )


def as_features(array: np.ndarray, field: str, n_features: int | None) -> np.ndarray:
    """A 2-D float64 matrix of rows, checked against the model's feature count."""
    if array.ndim != 2:
        if array.ndim == 1 and array.size == 0:
            raise BadRequestError(f"empty batch: {field!r} holds no rows")
        raise BadRequestError(
            f"{field!r} must be a list of rows, each a flat list of numbers "
            f"(got {array.ndim} dimension{'s' if array.ndim != 1 else ''})"
        )
    if array.shape[0] == 0:
        raise BadRequestError(f"empty batch: {field!r} holds no rows")
    if n_features is not None and array.shape[1] != n_features:
        raise BadRequestError(
            f"wrong number of features: the model expects {n_features} per row, "
            f"got {array.shape[1]}"
        )
    return array.astype(np.float64, copy=False)


def check_range(array: np.ndarray, dtype: np.dtype, datatype: str, field: str) -> None:
    """Refuses values that the declared datatype cannot hold (INT8 = 1000, UINT8 = -1, FP16 = 1e6).

    The matrix is converted to float64 for the model anyway; the check keeps the declared type
    honest, so that a client with a wrong datatype hears about it instead of getting a prediction.
    """
    if array.size == 0 or array.dtype.kind not in "iuf":
        return
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            value = low if low < info.min else high
            raise BadRequestError(
                f"{field!r} holds {value}, outside the range of {datatype} "
                f"({info.min} to {info.max})"
            )
    elif dtype.kind == "f" and dtype.itemsize < 8:
        limit = float(np.finfo(dtype).max)
        largest = float(np.abs(array.astype(np.float64, copy=False)).max())
        if largest > limit:
            raise BadRequestError(
                f"{field!r} holds a value of magnitude {largest:g}, outside the range of "
                f"{datatype} (at most {limit:g})"
            )


def boolean_parameter(parameters: dict[str, Any], key: str, field: str) -> bool:
    """A true/false parameter: absent or null is false; anything but a JSON boolean is refused."""
    value = parameters.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise BadRequestError(
            f"{field}.{key} must be true or false, got {_json_type(value)} ({shown})"
        )
    return value


def jsonable(array: np.ndarray) -> object:
    """What orjson can write: numeric arrays as they are (fast path), others as Python lists."""
    if array.dtype.kind in "biuf" and array.dtype.isnative and array.dtype.itemsize >= 4:
        return np.ascontiguousarray(array)
    return array.tolist()


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def dumps(value: object) -> bytes:
    """JSON bytes, numpy arrays included."""
    return orjson.dumps(value, option=JSON_OPTIONS)
