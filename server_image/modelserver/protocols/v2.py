"""The Open Inference Protocol (V2) REST inference request and response, JSON and binary tensors.

The model takes one 2-D input tensor `[rows, features]` of any numeric datatype. It answers one
output: `predict` (the default) or `predict_proba`, chosen by the requested output's name or by
`"parameters": {"predict_proba": true}`. Tensors may be sent and received in the binary tensor
extension (the `Inference-Header-Content-Length` header) that the Triton clients use by default.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np

from modelserver.core.errors import BadRequestError
from modelserver.protocols import codec
from modelserver.runtimes.runtime import PREDICT, PREDICT_PROBA

OUTPUT_NAMES = (PREDICT, PREDICT_PROBA)

# V2 datatype -> little-endian numpy dtype of its binary form.
_DTYPES = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
# numpy kind and item size -> V2 datatype.
_DATATYPES = {
    np.dtype(dtype).kind + str(np.dtype(dtype).itemsize): name for name, dtype in _DTYPES.items()
}
_LENGTH = struct.Struct("<I")


@dataclasses.dataclass(slots=True)
class Request:
    """What a V2 inference request asks for."""

    x: np.ndarray
    method: str
    id: str | None
    binary_output: bool


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype; anything not numeric (class names) is BYTES."""
    return _DATATYPES.get(dtype.kind + str(dtype.itemsize), "BYTES")


def decode(body: bytes, header_length: int | None, n_features: int | None) -> Request:
    """Parses and checks a V2 inference request; BadRequestError names the first problem found."""
    binary = b""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        binary = body[header_length:]
        body = body[:header_length]
    request = codec.parse_json(body)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequestError('missing "inputs": expected a list with one input tensor')
    if len(inputs) != 1:
        raise BadRequestError(
            f"expected exactly one input tensor [rows, features], got {len(inputs)} inputs"
        )
    x = _input_matrix(inputs[0], binary, n_features)
    method, binary_output = _wanted_output(request)
    request_id = request.get("id")
    return Request(
        x=x,
        method=method,
        id=request_id if isinstance(request_id, str) else None,
        binary_output=binary_output,
    )


def _input_matrix(tensor: object, binary: bytes, n_features: int | None) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise BadRequestError("each input must be an object with name, shape, datatype and data")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequestError('input is missing "datatype" (e.g. "FP64")')
    if datatype not in _DTYPES:
        raise BadRequestError(
            f"unsupported datatype {datatype!r}: the model takes numbers ({', '.join(_DTYPES)})"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BadRequestError(
            'input "shape" must be a list of non-negative integers, e.g. [rows, 4]'
        )
    if len(shape) != 2:
        raise BadRequestError(f"input shape must be [rows, features], got {shape}")
    count = math.prod(shape)
    parameters = tensor.get("parameters")
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        array = _binary_tensor(binary, binary_size, datatype, count)
    else:
        if "data" not in tensor:
            raise BadRequestError('input is missing "data"')
        array = codec.to_array(tensor["data"], "data")
        codec.check_numeric(array, "data", allow_bool=datatype == "BOOL")
        if datatype.startswith(("INT", "UINT")) and array.dtype.kind == "f":
            raise BadRequestError(f'datatype {datatype} but "data" holds non-integer numbers')
        if datatype == "BOOL" and array.dtype.kind != "b":
            raise BadRequestError('datatype BOOL but "data" holds numbers, not true/false')
        if array.size != count:
            raise BadRequestError(
                f'shape {shape} needs {count} values but "data" holds {array.size}'
            )
        codec.check_range(array, np.dtype(_DTYPES[datatype]), datatype, "inputs[0].data")
    return codec.as_features(array.reshape(shape), "data", n_features)


def _binary_tensor(binary: bytes, size: object, datatype: str, count: int) -> np.ndarray:
    dtype = np.dtype(_DTYPES[datatype])
    if not isinstance(size, int) or size != count * dtype.itemsize:
        raise BadRequestError(
            f"binary_data_size {size} does not match shape and datatype "
            f"({count} x {dtype.itemsize} bytes)"
        )
    if size > len(binary):
        raise BadRequestError(f"binary tensor of {size} bytes but only {len(binary)} bytes follow")
    return np.frombuffer(binary, dtype=dtype, count=count)


def _wanted_output(request: dict[str, object]) -> tuple[str, bool]:
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequestError('"parameters" must be an object')
    parameters = parameters or {}
    wants_proba = codec.boolean_parameter(parameters, PREDICT_PROBA, "parameters")
    method = PREDICT_PROBA if wants_proba else PREDICT
    binary_output = codec.boolean_parameter(parameters, "binary_data_output", "parameters")
    outputs = request.get("outputs")
    if outputs is None:
        return method, binary_output
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise BadRequestError(
            f'"outputs" must be a list of one output: {" or ".join(OUTPUT_NAMES)}'
        )
    if not outputs:
        return method, binary_output
    output = outputs[0]
    name = output.get("name") if isinstance(output, dict) else None
    if name not in OUTPUT_NAMES:
        raise BadRequestError(
            f"unknown output {name!r}: this model has {' and '.join(OUTPUT_NAMES)}"
        )
    output_parameters = output.get("parameters")
    if output_parameters is not None and not isinstance(output_parameters, dict):
        raise BadRequestError('"outputs[0].parameters" must be an object')
    if output_parameters and output_parameters.get("binary_data") is not None:
        binary_output = codec.boolean_parameter(
            output_parameters, "binary_data", "outputs[0].parameters"
        )
    return str(name), binary_output


def encode(
    result: np.ndarray, request: Request, model_name: str, model_version: str | None
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when the output is binary."""
    tensor: dict[str, object] = {
        "name": request.method,
        "datatype": datatype_of(result.dtype),
        "shape": list(result.shape),
    }
    response: dict[str, object] = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = [tensor]
    if not request.binary_output:
        tensor["data"] = codec.jsonable(result.reshape(-1))
        return codec.dumps(response), None
    raw = _to_binary(result, str(tensor["datatype"]))
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = codec.dumps(response)
    return header + raw, len(header)


def _to_binary(result: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in result.reshape(-1).tolist():
            encoded = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(encoded)) + encoded)
        return b"".join(parts)
    return np.ascontiguousarray(result, dtype=np.dtype(_DTYPES[datatype])).tobytes()
