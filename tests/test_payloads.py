"""Every inbound payload is decoded into a Struct or refused with one clear message."""

import math

import msgspec
import pytest

from server import errors, payloads

TOKEN = "0123456789abcdef" * 4


@pytest.mark.parametrize("value", ["123456", "999999", "100000"])
def test_six_digit_codes_are_accepted(value: str) -> None:
    assert payloads.code((value,)) == value


@pytest.mark.parametrize(
    "args",
    [
        (),
        (None,),
        (123456,),
        ("12345",),
        ("1234567",),
        ("012345",),
        ("12a456",),
        (" 123456",),
        ("123456\n",),
        (["123456"],),
        ({"code": "123456"},),
        (True,),
        ("x" * 10_000,),
    ],
)
def test_anything_else_is_not_a_code(args: tuple[object, ...]) -> None:
    with pytest.raises(payloads.BadPayload, match=f"^{errors.INVALID_CODE}$"):
        payloads.code(args)


def test_check_in_takes_the_bare_token_or_an_object_carrying_it() -> None:
    assert payloads.token((TOKEN,)) == TOKEN
    assert payloads.token(({"sessionToken": TOKEN},)) == TOKEN


@pytest.mark.parametrize(
    "args",
    [(), (None,), (TOKEN.upper(),), (TOKEN[:-1],), (TOKEN + "0",), (TOKEN + "\n",), (42,), ({},)],
)
def test_a_malformed_token_is_an_invalid_session_token(args: tuple[object, ...]) -> None:
    with pytest.raises(payloads.BadPayload, match=f"^{errors.INVALID_SESSION}$"):
        payloads.token(args)


def test_set_timers_accepts_whole_and_fractional_minutes() -> None:
    request = payloads.set_timers(
        ({"sessionToken": TOKEN, "reminderTimeMinutes": 5, "alertTimeMinutes": 0.5},)
    )
    assert (request.reminder_time_minutes, request.alert_time_minutes) == (5, 0.5)
    assert isinstance(request.reminder_time_minutes, int)


@pytest.mark.parametrize(
    "minutes", [0, -1, "5", None, True, math.inf, math.nan, 1e308, 43_201, [5], {"m": 5}]
)
def test_timer_minutes_must_be_finite_positive_numbers(minutes: object) -> None:
    payload = {"sessionToken": TOKEN, "reminderTimeMinutes": 5, "alertTimeMinutes": minutes}
    with pytest.raises(payloads.BadPayload, match=r"^Invalid timers: "):
        payloads.set_timers((payload,))


@pytest.mark.parametrize("decode", [payloads.set_timers, payloads.get_status, payloads.reconnect])
@pytest.mark.parametrize("args", [(), (None,), ("text",), (7,), ([],)])
def test_object_events_refuse_non_objects(decode: object, args: tuple[object, ...]) -> None:
    with pytest.raises(payloads.BadPayload, match=r"^Invalid payload for \w+: expected \{"):
        decode(args)  # type: ignore[operator]


@pytest.mark.parametrize("decode", [payloads.set_timers, payloads.get_status, payloads.reconnect])
def test_object_events_check_the_token_first(decode: object) -> None:
    with pytest.raises(payloads.BadPayload, match=f"^{errors.INVALID_SESSION}$"):
        decode(({"sessionToken": "nope", "role": "tracker"},))  # type: ignore[operator]


@pytest.mark.parametrize("role", [None, 5, "x" * 33, ["tracker"]])
def test_an_unusable_role_is_left_for_the_handler_to_refuse(role: object) -> None:
    request = payloads.reconnect(({"sessionToken": TOKEN, "role": role},))
    assert request.role == ""


class _Text(str):
    """A str subclass: not taken by the compiled-pattern shortcut, still msgspec's answer."""


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        (payloads.Token, payloads._TOKEN),
        (payloads.Code, payloads._CODE),
        (payloads.SixDigits, payloads._SIX_DIGITS),
    ],
)
def test_the_compiled_pattern_shortcut_answers_as_msgspec_does(
    kind: object, pattern: object
) -> None:
    values: list[object] = [
        TOKEN,
        TOKEN.upper(),
        TOKEN + "\n",
        "\n" + TOKEN,
        TOKEN[:-1],
        TOKEN + "0",
        TOKEN.replace("0", "\u0660"),  # an Arabic-Indic zero: a digit to \d, not to [0-9]
        "123456",
        "012345",
        "123456\n",
        "12345\uff16",  # a full-width six
        "",
        _Text(TOKEN),
        _Text("123456"),
        123456,
        None,
        b"123456",
    ]
    for value in values:
        try:
            expected: object = msgspec.convert(value, kind)
        except msgspec.ValidationError:
            expected = payloads.BadPayload
        try:
            got: object = payloads._text(value, pattern, kind, "refused")  # type: ignore[arg-type]
        except payloads.BadPayload:
            got = payloads.BadPayload
        assert got == expected, value
