"""Codecs turn the user function's return value into the bytes the server stores and replays.

The server replays exact bytes, so a codec decides whether every caller gets the same answer as
the first one. `JsonCodec` therefore refuses anything JSON would silently change (a tuple becoming a
list, an int key becoming a string, a datetime, NaN, a str subclass such as an Enum...) instead of
storing a lossy copy: `once` reports such a value as an uncertain outcome, with the CodecError.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Protocol, Set

from .errors import CodecError


class Codec(Protocol):
    """Encodes a return value into stored bytes and decodes stored bytes back."""

    def encode(self, value: Any) -> bytes:
        """Returns the bytes to store, or raises CodecError if the value cannot round-trip."""
        ...

    def decode(self, data: bytes) -> Any:
        """Returns the value for stored bytes, or raises CodecError."""
        ...


_SCALARS = (type(None), bool, int, str)


class JsonCodec:
    """Compact UTF-8 JSON that round-trips exactly or refuses.

    Accepted: None, bool, int, finite float, str, list, and dict with str keys, nested; each of
    exactly these types (subclasses such as IntEnum or OrderedDict are refused, because they would
    come back as their base type).
    """

    def encode(self, value: Any) -> bytes:
        _check_json(value)
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return text.encode("utf-8")
        except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as e:
            raise CodecError(f"value cannot be encoded as JSON: {e}") from e

    def decode(self, data: bytes) -> Any:
        try:
            return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise CodecError(f"stored response is not valid JSON: {e}") from e


class BytesCodec:
    """Stores raw bytes as they are; the function must return `bytes`."""

    def encode(self, value: Any) -> bytes:
        if type(value) is not bytes:
            raise CodecError(f"BytesCodec stores bytes only, got {type(value).__name__}")
        return value

    def decode(self, data: bytes) -> Any:
        return bytes(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_json(value: Any) -> None:
    try:
        _check(value, [], set())
    except RecursionError as e:
        raise CodecError("value is nested too deeply to be stored as JSON") from e


def _check(v: Any, path: List[str], ancestors: Set[int]) -> None:
    t = type(v)
    if t in _SCALARS:
        return
    if t is float:
        if not math.isfinite(v):
            raise CodecError(f"{_where(path)}: {v!r} is not representable in JSON")
        return
    if t is list or t is dict:
        if id(v) in ancestors:
            raise CodecError(f"{_where(path)}: the value contains itself")
        ancestors.add(id(v))
        if t is list:
            for i, item in enumerate(v):
                path.append(f"[{i}]")
                _check(item, path, ancestors)
                path.pop()
        else:
            for k, item in v.items():
                if type(k) is not str:
                    raise CodecError(
                        f"{_where(path)}: dict key {k!r} ({type(k).__name__}) "
                        "would come back as a string"
                    )
                path.append(f".{k}")
                _check(item, path, ancestors)
                path.pop()
        ancestors.discard(id(v))
        return
    hints: Dict[type, str] = {
        tuple: "it would come back as a list",
        set: "JSON has no sets",
        frozenset: "JSON has no sets",
        bytes: "use BytesCodec or encode it yourself",
    }
    hint = hints.get(t, "it would not come back as the same type")
    raise CodecError(f"{_where(path)}: {t.__name__} cannot be stored as JSON ({hint})")


def _where(path: List[str]) -> str:
    return "$" + "".join(path)
