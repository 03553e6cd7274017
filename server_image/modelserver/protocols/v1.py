"""The KServe V1 protocol: `{"instances": [[...], ...]}` in, `{"predictions": [...]}` out.

Probabilities instead of classes are asked for with `"parameters": {"predict_proba": true}`.
"""

from __future__ import annotations

import numpy as np

from modelserver.core.errors import BadRequestError
from modelserver.protocols import codec
from modelserver.runtimes.runtime import PREDICT, PREDICT_PROBA


def decode(body: bytes, n_features: int | None) -> tuple[np.ndarray, str]:
    """The feature matrix and the method a V1 predict request asks for."""
    request = codec.parse_json(body)
    if "instances" not in request:
        raise BadRequestError('missing "instances": expected {"instances": [[feature, ...], ...]}')
    array = codec.to_array(request["instances"], "instances")
    codec.check_numeric(array, "instances")
    x = codec.as_features(array, "instances", n_features)
    method = PREDICT
    parameters = request.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise BadRequestError('"parameters" must be an object')
        if codec.boolean_parameter(parameters, PREDICT_PROBA, "parameters"):
            method = PREDICT_PROBA
    return x, method


def encode(result: np.ndarray) -> bytes:
    """The V1 response body for one request's rows of output."""
    return codec.dumps({"predictions": codec.jsonable(result)})
