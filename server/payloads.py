"""Inbound payloads decoded into msgspec Structs; anything else becomes one clear error message."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import msgspec

from . import errors
from .models import CODE_PATTERN, TOKEN_PATTERN, Code, GetStatus, ReconnectSession, SetTimers, Token

S = TypeVar("S")
_TOKEN = re.compile(TOKEN_PATTERN)
_CODE = re.compile(CODE_PATTERN)


class BadPayload(ValueError):
    """The payload cannot be used; the message is what the client is told."""


def _convert(value: Any, kind: type[S] | Any, message: str) -> S:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError:
        raise BadPayload(message) from None


def _text(value: Any, pattern: re.Pattern[str], kind: Any, message: str) -> str:
    """A string of an Annotated pattern type. msgspec.convert builds the type's info on every
    call for an Annotated type (a check-in's token was 3.5% of its CPU): a string that matches
    the same pattern, compiled once, is taken as it is; anything else gets msgspec's answer."""
    if type(value) is str and pattern.search(value) is not None:
        return value
    text: str = _convert(value, kind, message)
    return text


def _first(args: tuple[Any, ...]) -> Any:
    return args[0] if args else None


def code(args: tuple[Any, ...]) -> str:
    return _text(_first(args), _CODE, Code, errors.INVALID_CODE)


# Six digits, a leading zero too: trackCode answers any of them as the Node server did
# ("Invalid or expired code" when no such code is live), only other input as invalid.
SIX_DIGITS = r"^[0-9]{6}\Z"
SixDigits = Annotated[str, msgspec.Meta(pattern=SIX_DIGITS)]
_SIX_DIGITS = re.compile(SIX_DIGITS)


def any_code(args: tuple[Any, ...]) -> str:
    """trackCode: what a person may have typed (the codes themselves start at 100000)."""
    return _text(_first(args), _SIX_DIGITS, SixDigits, errors.INVALID_CODE)


def token(args: tuple[Any, ...]) -> str:
    """checkIn: the bare token, or an object carrying it."""
    value = _first(args)
    if isinstance(value, dict):
        value = value.get("sessionToken")
    return _text(value, _TOKEN, Token, errors.INVALID_SESSION)


def _object(event: str, args: tuple[Any, ...], expected: str) -> dict[str, Any]:
    value = _first(args)
    if not isinstance(value, dict):
        raise BadPayload(errors.invalid_payload(event, expected))
    _text(value.get("sessionToken"), _TOKEN, Token, errors.INVALID_SESSION)
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
