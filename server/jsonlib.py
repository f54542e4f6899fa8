"""A stdlib-shaped JSON module over msgspec, for python-socketio's `json=` (PLATFORM.md)."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps(obj: Any, **_: Any) -> str:
    return _encoder.encode(obj).decode()


def loads(data: str | bytes, **_: Any) -> Any:
    # msgspec.DecodeError is a ValueError, which is what python-socketio expects on bad input;
    # nesting deeper than msgspec's limit is bad input too.
    try:
        return _decoder.decode(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
