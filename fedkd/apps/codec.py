"""Secure-aggregation messages <-> Flower `RecordDict`s, and the client's saved state <-> bytes.

Owns: the wire form of `fedkd.secagg.messages` over Flower: one `ConfigRecord` named "secagg"
holding the class name and one entry per field (ints, bytes, lists of them; a dict becomes two
lists, "<field>.keys" and "<field>.values"). Nothing is pickled; anything that does not match the
message class's field types exactly is a `ProtocolError`, never a crash.
Must not touch: protocol logic (`fedkd.secagg`) or Flower messaging (`fedkd.apps.secure`).
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields

from flwr.app import ConfigRecord, RecordDict

from fedkd.secagg import MESSAGE_TYPES, ProtocolError

RECORD = "secagg"
_INT64_MAX = 2**63 - 1  # Flower stores ints as signed 64-bit


def encode(message: object) -> RecordDict:
    rec: dict[str, object] = {"type": type(message).__name__}
    for f in fields(message):
        value = getattr(message, f.name)
        if isinstance(value, dict):
            rec[f"{f.name}.keys"] = [_int(k) for k in value]
            rec[f"{f.name}.values"] = list(value.values())
        elif isinstance(value, tuple):
            rec[f.name] = [_int(v) for v in value]
        elif isinstance(value, int) and not isinstance(value, bool):
            rec[f.name] = _int(value)
        else:
            rec[f.name] = value
    return RecordDict({RECORD: ConfigRecord(rec)})


def _int(value: int) -> int:
    if not 0 <= value <= _INT64_MAX:
        raise ValueError(f"id {value} does not fit Flower's int64 records")
    return value


def decode(content: RecordDict) -> object:
    """The protocol message in `content`; ProtocolError when it is not a well-formed one."""
    try:
        rec = content[RECORD]
    except KeyError:
        raise ProtocolError(f"no '{RECORD}' record in the message") from None
    name = rec.get("type")
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ProtocolError(f"unknown secure-aggregation message type {name!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        values[f.name] = _field(rec, f.name, hints[f.name], name)
    return cls(**values)


def _field(rec, field: str, hint, cls_name: str) -> object:
    origin = typing.get_origin(hint)
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        keys, vals = rec.get(f"{field}.keys"), rec.get(f"{field}.values")
        if not isinstance(keys, list) or not isinstance(vals, list) or len(keys) != len(vals):
            raise ProtocolError(f"{cls_name}.{field}: malformed dict")
        return {_check(k, key_t, cls_name, field): _check(v, val_t, cls_name, field) for k, v in zip(keys, vals)}
    if field not in rec:
        raise ProtocolError(f"{cls_name}.{field} is missing")
    value = rec[field]
    if origin is tuple:
        if not isinstance(value, list):
            raise ProtocolError(f"{cls_name}.{field}: expected a list")
        (item_t, _) = typing.get_args(hint)
        return tuple(_check(v, item_t, cls_name, field) for v in value)
    return _check(value, hint, cls_name, field)


def _check(value, kind, cls_name: str, field: str):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ProtocolError(f"{cls_name}.{field}: expected {kind.__name__}, got {type(value).__name__}")
    return value


# ---- the client's state between stages (it stays on the node) ------------------------------
# SecAggClient.to_state() is plain values: ints, strs, bytes, tuples and dicts with int or str keys.
# Tagged JSON keeps the types exact: {"b": hex} bytes, {"t": [...]} tuple, {"d": [[k, v], ...]} dict.

def pack_state(state: dict) -> bytes:
    return json.dumps(_tag(state), separators=(",", ":")).encode()


def unpack_state(blob: bytes) -> dict:
    return _untag(json.loads(blob.decode()))


def _tag(v):
    if isinstance(v, bytes):
        return {"b": v.hex()}
    if isinstance(v, tuple):
        return {"t": [_tag(x) for x in v]}
    if isinstance(v, dict):
        return {"d": [[_tag(k), _tag(x)] for k, x in v.items()]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"cannot store {type(v).__name__} in the client state")


def _untag(v):
    if isinstance(v, dict):
        if "b" in v:
            return bytes.fromhex(v["b"])
        if "t" in v:
            return tuple(_untag(x) for x in v["t"])
        return {_untag(k): _untag(x) for k, x in v["d"]}
    return v
