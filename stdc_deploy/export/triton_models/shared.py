"""What every model.py of the repository shares; copied as ``stdc_ops/shared.py``."""

from __future__ import annotations

import json


def model_metadata(args: dict) -> dict:
    """The ``metadata`` parameter of the model's configuration (a JSON object): classes,
    mean, std, network input size, protocol."""
    config = json.loads(args["model_config"])
    return json.loads(config["parameters"]["metadata"]["string_value"])


def error_response(pb_utils, exc: BaseException):
    """A response failing one request with a one-line message: a ValueError (a bad request)
    as INVALID_ARG (HTTP 400) with its own message, anything else as INTERNAL (500) with
    its type. Python backends older than error codes get the message alone."""
    lines = str(exc).splitlines()
    text = lines[0] if lines else "no message"
    bad_request = isinstance(exc, ValueError)
    if not bad_request:
        text = f"{type(exc).__name__}: {text}"
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if bad_request else "INTERNAL", None)
    error = pb_utils.TritonError(text) if code is None else pb_utils.TritonError(text, code)
    return pb_utils.InferenceResponse(error=error)
