"""Tensors as the Open Inference Protocol (KServe v2) carries them, independent of transport.

A :class:`Tensor` holds a numpy array and its protocol datatype. ``BYTES`` tensors are
numpy ``object`` arrays of ``bytes``; on the wire (binary tensor extension, gRPC raw
contents) each element is a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import StdcError

# protocol datatype -> numpy dtype (BYTES: object arrays of bytes)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}


class ServeError(StdcError):
    """A request the server refuses: ``status`` is the HTTP status (gRPC maps it), the
    message one line naming what was wrong."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass
class Tensor:
    name: str
    datatype: str
    data: np.ndarray  # shaped; BYTES: dtype object holding bytes
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> Tensor:
        return cls(name, datatype_of(array), array)

    def to_bytes(self) -> bytes:
        """The raw little-endian contents (binary extension / gRPC raw_*_contents)."""
        if self.datatype == "BYTES":
            return encode_bytes(self.data)
        return np.ascontiguousarray(self.data, dtype=self.data.dtype.newbyteorder("<")).tobytes()


@dataclass
class InferRequest:
    model: str
    inputs: list[Tensor]
    version: str | None = None
    id: str | None = None
    outputs: list[str] | None = None  # requested output names; None: all
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    name = _BY_DTYPE.get(array.dtype.newbyteorder("=") if array.dtype.byteorder not in "=|" else array.dtype)
    if name is None:
        raise ValueError(f"no protocol datatype for numpy {array.dtype}")
    return name


def element_size(datatype: str) -> int | None:
    """Bytes per element; None for BYTES (variable)."""
    return None if datatype == "BYTES" else DATATYPES[datatype].itemsize


def check_shape(name: str, shape) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ServeError(400, f"input {name!r}: shape must be a list of integers, got {shape!r}") from None
    if any(d < 0 for d in dims):
        raise ServeError(400, f"input {name!r}: negative dimension in shape {list(dims)}")
    return dims


def from_bytes(name: str, datatype: str, shape, raw: bytes | memoryview) -> Tensor:
    """A tensor from its raw contents; ServeError 400 when they do not fit ``shape``."""
    if datatype not in DATATYPES:
        raise ServeError(400, f"input {name!r}: unknown datatype {datatype!r}")
    dims = check_shape(name, shape)
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if datatype == "BYTES":
        return Tensor(name, datatype, decode_bytes(name, raw, count).reshape(dims))
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ServeError(400, f"input {name!r}: {len(raw)} bytes do not hold {datatype} {list(dims)} "
                              f"({count * dtype.itemsize} bytes)")
    return Tensor(name, datatype, np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(dims))


def from_list(name: str, datatype: str, shape, values) -> Tensor:
    """A tensor from JSON ``data`` (flat or nested, row-major)."""
    if datatype not in DATATYPES:
        raise ServeError(400, f"input {name!r}: unknown datatype {datatype!r}")
    dims = check_shape(name, shape)
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if datatype == "BYTES":
        flat = list(_flatten(values))
        if len(flat) != count:
            raise ServeError(400, f"input {name!r}: {len(flat)} values for shape {list(dims)}")
        array = np.empty(count, dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise ServeError(400, f"input {name!r}: BYTES values in JSON must be strings "
                                      "(send binary data with the binary tensor extension)")
            array[i] = value.encode("utf-8")
        return Tensor(name, datatype, array.reshape(dims))
    try:
        array = np.asarray(values, dtype=DATATYPES[datatype])
    except (TypeError, ValueError) as exc:
        raise ServeError(400, f"input {name!r}: data is not {datatype} ({exc})") from None
    if array.size != count:
        raise ServeError(400, f"input {name!r}: {array.size} values for shape {list(dims)}")
    return Tensor(name, datatype, array.reshape(dims))


def _flatten(values):
    if isinstance(values, (list, tuple)):
        for v in values:
            yield from _flatten(v)
    else:
        yield values


def encode_bytes(array: np.ndarray) -> bytes:
    """BYTES elements in row-major order, each as a 4-byte little-endian length + its bytes."""
    parts = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """``count`` length-prefixed elements; ServeError 400 when ``raw`` does not hold exactly that."""
    view = memoryview(raw)
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise ServeError(400, f"input {name!r}: BYTES data ends before element {i + 1} of {count}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise ServeError(400, f"input {name!r}: BYTES element {i + 1} claims {length} bytes, "
                                  f"{len(view) - offset} remain")
        out[i] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(view):
        raise ServeError(400, f"input {name!r}: {len(view) - offset} bytes left over after {count} BYTES element(s)")
    return out
