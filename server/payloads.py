"""Inbound payloads decoded into msgspec Structs; anything else becomes one clear error message."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec

from . import errors
from .models import Code, GetStatus, ReconnectSession, SetTimers, Token

S = TypeVar("S")


class BadPayload(ValueError):
    """The payload cannot be used; the message is what the client is told."""


def _convert(value: Any, kind: type[S] | Any, message: str) -> S:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError:
        raise BadPayload(message) from None


def _first(args: tuple[Any, ...]) -> Any:
    return args[0] if args else None


def code(args: tuple[Any, ...]) -> str:
    return _convert(_first(args), Code, errors.INVALID_CODE)


# Six digits, a leading zero too: trackCode answers any of them as the Node server did
# ("Invalid or expired code" when no such code is live), only other input as invalid.
SixDigits = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}\Z")]


def any_code(args: tuple[Any, ...]) -> str:
    """trackCode: what a person may have typed (the codes themselves start at 100000)."""
    return _convert(_first(args), SixDigits, errors.INVALID_CODE)


def token(args: tuple[Any, ...]) -> str:
    """checkIn: the bare token, or an object carrying it."""
    value = _first(args)
    if isinstance(value, dict):
        value = value.get("sessionToken")
    return _convert(value, Token, errors.INVALID_SESSION)


def _object(event: str, args: tuple[Any, ...], expected: str) -> dict[str, Any]:
    value = _first(args)
    if not isinstance(value, dict):
        raise BadPayload(errors.invalid_payload(event, expected))
    _convert(value.get("sessionToken"), Token, errors.INVALID_SESSION)
    return value


def reconnect(args: tuple[Any, ...]) -> ReconnectSession:
    value = _object("reconnectSession", args, "{sessionToken, role}")
    role = value.get("role")
    # An unusable role is answered after the session lookup, as the Node server did.
    if not isinstance(role, str) or len(role) > 32:
        value = {**value, "role": ""}
    return _convert(value, ReconnectSession, errors.INVALID_ROLE)


def set_timers(args: tuple[Any, ...]) -> SetTimers:
    value = _object("setTimers", args, "{sessionToken, reminderTimeMinutes, alertTimeMinutes}")
    return _convert(value, SetTimers, errors.INVALID_TIMERS)


def get_status(args: tuple[Any, ...]) -> GetStatus:
    value = _object("getStatus", args, "{sessionToken}")
    return _convert(value, GetStatus, errors.invalid_payload("getStatus", "{sessionToken}"))
