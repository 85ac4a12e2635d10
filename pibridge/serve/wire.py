"""OpenPI's wire encoding: msgpack with numpy arrays and scalars as tagged maps (own code, same bytes).

Upstream: Physical-Intelligence/openpi@15a9616 packages/openpi-client/src/openpi_client/msgpack_numpy.py:21-57:
  ndarray  -> {b"__ndarray__": True, b"data": arr.tobytes() (C order), b"dtype": arr.dtype.str, b"shape": arr.shape}
  np.generic -> {b"__npgeneric__": True, b"data": x.item(), b"dtype": x.dtype.str}
  object ("O"), void ("V") and complex ("c") dtypes are refused (:22-23);
msgpack's defaults otherwise (use_bin_type=True: str -> str, bytes -> bin; tuples -> arrays; decoded maps keep str
keys as str and the tag keys as bytes). tests/test_serve.py checks the bytes against the real openpi-client.

Decoding is defensive (a server reads untrusted frames): anything that is not valid msgpack, a tagged map whose
dtype, shape or data do not fit, or a refused dtype is a WireError naming what was wrong. Decoded arrays are
read-only views of the frame, as upstream's np.ndarray(buffer=...) gives.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

REFUSED_KINDS = ("V", "O", "c")  # msgpack_numpy.py:22


class WireError(ValueError):
    """A frame that is not OpenPI's msgpack-numpy encoding (or a value it cannot carry)."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_KINDS:
        raise WireError(f"dtype {obj.dtype} cannot be sent (OpenPI's wire refuses object, void and complex dtypes)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialize {type(obj).__name__!r} object")  # msgpack's own message for the rest


def _dtype(spec: Any) -> np.dtype:
    if not isinstance(spec, (str, bytes)):
        raise WireError(f"array dtype {spec!r} is not a numpy dtype string (e.g. '<f4')")
    try:
        dt = np.dtype(spec.decode() if isinstance(spec, bytes) else spec)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise WireError(f"array dtype {spec!r} is not a numpy dtype string (e.g. '<f4')") from None
    if dt.kind in REFUSED_KINDS or dt.hasobject:
        raise WireError(f"array dtype {dt} is refused (object, void and complex dtypes cannot be sent)")
    return dt


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dt, shape, data = _dtype(obj.get(b"dtype")), obj.get(b"shape"), obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise WireError(f"array shape {shape!r} is not a list of non-negative integers")
        if not isinstance(data, bytes):
            raise WireError(f"array data is {type(data).__name__}, not bytes")
        need = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if len(data) != need:
            raise WireError(f"array data has {len(data)} bytes; shape {tuple(shape)} of {dt} needs {need}")
        return np.ndarray(buffer=data, dtype=dt, shape=tuple(shape))
    if b"__npgeneric__" in obj:
        dt = _dtype(obj.get(b"dtype"))
        try:
            return dt.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as err:
            raise WireError(f"scalar {obj.get(b'data')!r} is not a {dt}: {err}") from None
    return obj


def pack(obj: Any) -> bytes:
    """Encode as openpi_client.msgpack_numpy.packb does (byte for byte)."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """Decode a frame (openpi_client.msgpack_numpy.unpackb), or raise WireError saying what is wrong with it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"a {type(data).__name__} frame; OpenPI's protocol sends binary frames")
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except WireError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as err:
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise WireError(f"not a msgpack frame ({detail})") from None
