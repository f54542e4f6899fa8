"""Every Redis key this server reads or writes."""

from typing import Final

SESSION_TTL_SECONDS: Final = 30 * 24 * 3600  # renewed on every write, as the Node server did


def session(token: str) -> str:
    """The Node server's key for a session record."""
    return f"session:{token}"


def attempts(address: str, window: int) -> str:
    """Failed code attempts from one client address in one minute."""
    return f"attempts:{address}:{window}"


DEADLINES: Final = "deadlines"  # sorted set: `<kind>:<token>` scored by due time (ms)
DEADLINE_LEASES: Final = "deadlines:leased"  # sorted set: `<kind>:<token>|<due>` by lease end
