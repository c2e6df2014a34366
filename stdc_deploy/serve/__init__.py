"""Serving over the Open Inference Protocol (KServe v2): :class:`ModelServer` (transport-free,
dynamic batching), an HTTP front end (:mod:`.http`, the ``serve`` extra) and a gRPC one
(:mod:`.grpc`, the ``grpc`` extra). ``stdc serve`` runs both."""

from .server import ModelServer
from .tensors import InferRequest, InferResponse, ServeError, Tensor

__all__ = ["InferRequest", "InferResponse", "ModelServer", "ServeError", "Tensor"]
