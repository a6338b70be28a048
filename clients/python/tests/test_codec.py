"""The default JSON codec round-trips exactly what JSON can hold and refuses everything else."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import math
from typing import Any

import pytest

from sentinel_client import BytesCodec, CodecError, JsonCodec


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


ROUND_TRIPS: list[Any] = [
    None,
    True,
    0,
    -(2**80),
    1.5,
    -0.0,
    1e300,
    "",
    "héllo ☃ \x00 \n",
    [],
    {},
    [1, "a", None, [2.25, {"x": False}]],
    {"b": 1, "a": {"nested": [1, 2, 3]}, "": "empty key"},
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
def test_json_codec_round_trips_exactly(value: Any) -> None:
    codec = JsonCodec()
    back = codec.decode(codec.encode(value))
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, dict):
        assert list(back) == list(value), "key order is preserved"
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


REFUSED: list[Any] = [
    (1, 2),
    {"a": (1,)},
    {1: "int key"},
    {None: "none key"},
    {(1, 2): "tuple key"},
    datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    datetime.date(2024, 1, 1),
    float("nan"),
    float("inf"),
    [float("-inf")],
    {1, 2},
    frozenset(),
    b"bytes",
    decimal.Decimal("1.10"),
    Color.RED,
    Name("subclass of str"),
    collections.OrderedDict(a=1),
    object(),
]


@pytest.mark.parametrize("value", REFUSED, ids=lambda v: type(v).__name__)
def test_json_codec_refuses_what_json_would_change(value: Any) -> None:
    with pytest.raises(CodecError):
        JsonCodec().encode(value)


def test_json_codec_refuses_a_value_that_contains_itself() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CodecError, match="contains itself"):
        JsonCodec().encode(loop)


def test_json_codec_accepts_shared_but_acyclic_values() -> None:
    shared = [1, 2]
    assert JsonCodec().decode(JsonCodec().encode([shared, shared])) == [[1, 2], [1, 2]]


def test_json_codec_refuses_undecodable_bytes() -> None:
    with pytest.raises(CodecError):
        JsonCodec().decode(b"\xff not json")
    with pytest.raises(CodecError):
        JsonCodec().decode(b"NaN")


def test_bytes_codec_stores_bytes_only() -> None:
    codec = BytesCodec()
    assert codec.decode(codec.encode(b"\x00\xff raw")) == b"\x00\xff raw"
    for bad in ("text", bytearray(b"x"), memoryview(b"x"), None):
        with pytest.raises(CodecError):
            codec.encode(bad)
