"""Every string the server sends in an `error` event. The first five are the Node server's own."""

from typing import Final

from .models import MAX_TIMER_MINUTES

INVALID_SESSION: Final = "Invalid session token"
INVALID_ROLE: Final = "Invalid role"
INVALID_OR_EXPIRED_CODE: Final = "Invalid or expired code"
CODE_EXPIRED: Final = "Code has expired"
CODE_IN_USE: Final = "Code already in use. Generating new code..."

# Beyond: clear messages for input the Node server accepted or crashed on.
INVALID_CODE: Final = "Invalid code: expected a string of 6 digits"
INVALID_TIMERS: Final = (
    "Invalid timers: reminderTimeMinutes and alertTimeMinutes must be numbers "
    f"greater than 0 and at most {MAX_TIMER_MINUTES}"
)
TOO_MANY_ATTEMPTS: Final = "Too many attempts. Try again later."
STORAGE_UNAVAILABLE: Final = "Session storage is temporarily unavailable. Try again shortly."
INTERNAL: Final = "Internal server error"
MALFORMED_PACKET: Final = "Malformed message: not a valid Socket.IO packet"
# Quotas (SECURITY.md): what a refused client is told.
TOO_MANY_CODES: Final = "Too many codes registered. Use the code you have, or try again later."
TOO_MANY_TRACKERS: Final = "Too many trackers for this session"
TOO_MANY_EVENTS: Final = "Too many events at once: wait for the replies"
TOO_MANY_CONNECTIONS: Final = "Too many connections from this address"
NOT_THE_TRACKED_PERSON: Final = "Not allowed: this connection is a tracker of the session"
NOT_A_TRACKER: Final = "Not allowed: this connection is the tracked person of the session"
ATTACHMENTS_REFUSED: Final = "Binary attachments are not accepted"


def invalid_payload(event: str, expected: str) -> str:
    return f"Invalid payload for {event}: expected {expected}"
