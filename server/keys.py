"""Every Redis key this server reads or writes."""

from typing import Final

SESSION_TTL_SECONDS: Final = 30 * 24 * 3600  # renewed on every write, as the Node server did


def session(token: str) -> str:
    """The Node server's key for a session record."""
    return f"session:{token}"


def attempts(address: str, window: int) -> str:
    """Code attempts from one client address in one minute (hash: failed, inflight). Not the
    `attempts:` counter of earlier versions: instances of both may share Redis in a deploy."""
    return f"code-attempts:{address}:{window}"


def registrations(address: str, window: int) -> str:
    """registerCode events from one client address in one minute."""
    return f"registrations:{address}:{window}"


def pending_codes(address: str) -> str:
    """Sorted set: the unpaired codes registered from one client address, scored by when each
    stops counting (ms, Redis's clock); trimmed by the script that changes codes."""
    return f"pending-codes:{address}"


DEADLINES: Final = "deadlines"  # sorted set: `<kind>:<token>` scored by due time (ms)
# sorted set: `<kind>:<token>|<due>` scored by the end of its lease (Redis ms)
DEADLINE_LEASES: Final = "deadlines:leased"
INSTANCES: Final = "instances"  # sorted set: instance id scored by its last heartbeat (Redis ms)
# Written once into an empty Redis by the first heartbeat: a new value means Redis lost its data.
DATA_MARKER: Final = "data-marker"
# Set by the first instance that sees a new marker, expiring a few seconds later: no deadline is
# claimed while it exists, so that the copies written back after the loss of data, and the
# changes held meanwhile, are all in before any alert is decided on a record (deadlines.py).
DATA_REBASE: Final = "data-marker:rebasing"
RELAY_CHANNEL: Final = "alliswell:relay"  # pub/sub: emits for sockets of other instances


def code(value: str) -> str:
    """A pairing code (JSON of PendingCode), unique across instances."""
    return f"code:{value}"


def code_of(token: str) -> str:
    """The paired code of a session, for the tracked app that reconnects with a new socket."""
    return f"code-of:{token}"


def instance_sessions(instance: str) -> str:
    """Set of `<role>:<token>:<sid>`: where the sockets of one instance are bound, so that a
    survivor can tell their sessions when the instance dies."""
    return f"instance-sessions:{instance}"


def instance_sweep(instance: str) -> str:
    """Who sweeps a dead instance's sessions (SET NX): exactly one survivor does."""
    return f"instance-sweep:{instance}"
