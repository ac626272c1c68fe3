"""Feast's online-store encoding, read without Feast: entity keys, value protos, device codes."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from feedrank import feature_spec as spec
from feedrank.schemas import DEVICES

UNKNOWN_ID = -1
_STRING, _INT64 = 2, 4  # feast ValueType numbers used by the entity-key serialization
STREAM_VIEWS = {v.name for v in spec.VIEWS.values() if v.kind == "stream"}


def device_code(device: str) -> int:
    """Index of ``device`` in ``feedrank.schemas.DEVICES``; ``ValueError`` if unknown."""
    try:
        return DEVICES.index(device)
    except ValueError:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}") from None


# ------------------------------------------------------------------ Feast's key encoding


class EntityKeyCodec:
    """Feast's entity-key serialization (version 3) for int64 join keys, precomputed.

    ``serialize_entity_key`` sorts join keys by name and writes: key count, then for each key
    (STRING type, name length, name), then for each value (INT64 type, 8, little-endian q).
    """

    def __init__(self, join_keys: Sequence[str]) -> None:
        self.join_keys = tuple(join_keys)
        order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
        self._order = order
        head = [struct.pack("<I", len(join_keys))]
        for i in order:
            name = join_keys[i].encode()
            head += [struct.pack("<II", _STRING, len(name)), name]
        self.prefix = b"".join(head)
        self._value_head = struct.pack("<II", _INT64, 8)

    def encode(self, rows: Sequence[Sequence[int]]) -> list[bytes]:
        """Serialized keys of rows given in ``join_keys`` order."""
        prefix, vh = self.prefix, self._value_head
        if len(self._order) == 1:
            return [prefix + vh + int(r[0]).to_bytes(8, "little", signed=True) for r in rows]
        order = self._order
        return [
            prefix + b"".join(vh + int(r[i]).to_bytes(8, "little", signed=True) for i in order)
            for r in rows
        ]

    def decode(self, key: bytes) -> tuple[int, ...] | None:
        """Join-key values (``join_keys`` order) of a serialized key; None if not this entity."""
        n = len(self._order)
        if not key.startswith(self.prefix) or len(key) != len(self.prefix) + 16 * n:
            return None
        pos = len(self.prefix)
        out = [0] * n
        for i in self._order:
            out[i] = int.from_bytes(key[pos + 8 : pos + 16], "little", signed=True)
            pos += 16
        return tuple(out)


def decode_value(blob: bytes | None) -> float:
    """A serialized Feast ``ValueProto`` as float (NaN when null/absent)."""
    if not blob:
        return np.nan
    tag = blob[0]
    if tag == 0x29 and len(blob) == 9:  # double_val (field 5, fixed64)
        return struct.unpack_from("<d", blob, 1)[0]
    if tag == 0x20 and blob[-1] < 0x80 and len(blob) <= 9:  # int64_val (field 4), varint
        result = 0
        for shift, byte in enumerate(blob[1:]):
            result |= (byte & 0x7F) << (7 * shift)
        return float(result)  # < 2**56: non-negative, so no two's complement to undo
    from feast.protos.feast.types.Value_pb2 import Value

    value = Value.FromString(blob)
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return np.nan
    return float(getattr(value, kind))


# Counters repeat the same few serialized values: decode each distinct blob once.
VALUE_MEMO: dict[bytes | None, float] = {}
_VALUE_MEMO_MAX = 200_000


def memo_decode(blob: bytes | None) -> float:
    number = decode_value(blob)
    if len(VALUE_MEMO) < _VALUE_MEMO_MAX:
        VALUE_MEMO[blob] = number
    return number
