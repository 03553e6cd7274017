"""Runs in KServe's own environment (bench's cached venv), not in the project's: calls a server
with KServe's `InferenceRESTClient` and prints what each call returned as one JSON object.

    <kserve venv>/bin/python kserve_client_calls.py http://127.0.0.1:PORT MODEL ROWS_JSON

A call that raises is reported as {"error": "<type>: <message>"}, so the test names the call that
broke instead of a traceback from another interpreter.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def _call(results: dict[str, Any], name: str, call: Callable[[], Awaitable[Any]]) -> None:
    try:
        results[name] = await call()
    except Exception as error:  # every failure is a result to report
        results[name] = {"error": f"{type(error).__name__}: {error}"}


def _v2_request(model: str, rows: np.ndarray, *, binary: bool, output: str) -> InferRequest:
    tensor = InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    wanted = RequestedOutput(output, {"binary_data": binary})
    return InferRequest(model, [tensor], request_id="kserve-client", request_outputs=[wanted])


async def main(base: str, model: str, rows: np.ndarray) -> dict[str, Any]:
    results: dict[str, Any] = {}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30, retries=0))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30, retries=0))
    try:
        await _call(results, "v1_server_live", lambda: v1.is_server_live(base))
        await _call(results, "v1_model_ready", lambda: v1.is_model_ready(base, model))
        await _call(
            results,
            "v1_predict",
            lambda: v1.infer(base, {"instances": rows.tolist()}, model_name=model),
        )
        await _call(results, "v2_server_live", lambda: v2.is_server_live(base))
        await _call(results, "v2_server_ready", lambda: v2.is_server_ready(base))
        await _call(results, "v2_model_ready", lambda: v2.is_model_ready(base, model))
        for binary in (False, True):
            for output in ("predict", "predict_proba"):
                key = f"v2_{output}_{'binary' if binary else 'json'}"

                async def infer(binary: bool = binary, output: str = output) -> Any:
                    request = _v2_request(model, rows, binary=binary, output=output)
                    response = await v2.infer(base, request, model_name=model)
                    return {
                        "id": response.id,
                        "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
                    }

                await _call(results, key, infer)
    finally:
        await v1.close()
        await v2.close()
    return results


if __name__ == "__main__":
    base_url, model_name, rows_json = sys.argv[1:4]
    matrix = np.array(json.loads(rows_json), dtype=np.float64)
    print(json.dumps(asyncio.run(main(base_url, model_name, matrix))))
