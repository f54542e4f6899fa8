"""Who may register or track a code: pure decisions, and the book that holds the codes."""

from msgspec.structs import replace

from server.models import PendingCode
from server.pairing import CODE_TTL_MS, Claim, CodeBook, Track, contested, register, track

NOW = 1_800_000_000_000
GRACE = 300_000
TOKEN = "ab" * 32
HOME = "192.0.2.10"  # the owner's client address


def pending(owner: str | None = "owner", **fields: object) -> PendingCode:
    return PendingCode(
        code="123456",
        tracked_sid=owner,
        expires_at=NOW + CODE_TTL_MS,
        address=HOME,
        **fields,  # type: ignore[arg-type]
    )


def test_an_unknown_code_is_registered_for_five_minutes() -> None:
    claim, entry = register(None, "123456", "a", HOME, NOW, GRACE)
    assert claim is Claim.FRESH
    assert entry == PendingCode(
        code="123456", tracked_sid="a", expires_at=NOW + CODE_TTL_MS, address=HOME
    )


def test_the_owner_registers_its_pending_code_afresh() -> None:
    claim, entry = register(pending(), "123456", "owner", HOME, NOW + 1000, GRACE)
    assert claim is Claim.FRESH and entry.expires_at == NOW + 1000 + CODE_TTL_MS


def test_another_socket_cannot_take_a_connected_owners_pending_code() -> None:
    original = pending()
    assert register(original, "123456", "stranger", HOME, NOW, GRACE) == (Claim.IN_USE, original)


def test_a_pending_code_whose_owner_left_can_be_registered_again() -> None:
    claim, entry = register(pending(None, left_at=NOW), "123456", "new", HOME, NOW + 1, GRACE)
    assert claim is Claim.FRESH and entry.tracked_sid == "new"


def test_an_expired_pending_code_is_free_again() -> None:
    claim, _ = register(pending(), "123456", "stranger", HOME, NOW + CODE_TTL_MS + 1, GRACE)
    assert claim is Claim.FRESH


def test_the_tracked_socket_resumes_its_paired_code() -> None:
    claim, entry = register(pending(session_token=TOKEN), "123456", "owner", HOME, NOW, GRACE)
    assert claim is Claim.RESUMED and entry.session_token == TOKEN


def test_a_stranger_naming_a_paired_code_gets_no_session() -> None:
    claim, _ = register(pending(session_token=TOKEN), "123456", "stranger", HOME, NOW, GRACE)
    assert claim is Claim.IN_USE


def test_the_app_reclaims_its_paired_code_within_the_grace_period() -> None:
    entry = pending(None, session_token=TOKEN, left_at=NOW)
    claim, resumed = register(entry, "123456", "new-socket", HOME, NOW + GRACE, GRACE)
    assert claim is Claim.RESUMED
    assert resumed.tracked_sid == "new-socket" and resumed.left_at is None


def test_a_paired_code_retires_after_the_grace_period() -> None:
    entry = pending(None, session_token=TOKEN, left_at=NOW)
    claim, fresh = register(entry, "123456", "late", HOME, NOW + GRACE + 1, GRACE)
    assert claim is Claim.FRESH and fresh.session_token is None
    assert track(entry, NOW + GRACE + 1, GRACE) is Track.UNKNOWN


def test_tracking_decisions() -> None:
    assert track(None, NOW, GRACE) is Track.UNKNOWN
    assert track(pending(), NOW, GRACE) is Track.PAIR
    assert track(pending(), NOW + CODE_TTL_MS + 1, GRACE) is Track.EXPIRED
    # A paired code no longer expires: later trackers join the session.
    assert track(pending(session_token=TOKEN), NOW + 10 * CODE_TTL_MS, GRACE) is Track.PAIR


def test_the_book_indexes_codes_by_token_and_owner() -> None:
    book = CodeBook()
    book.put(pending())
    book.put(replace(pending(), code="654321", session_token=TOKEN))
    assert book.for_token(TOKEN) is not None and book.for_token(TOKEN).code == "654321"  # type: ignore[union-attr]
    assert {e.code for e in book.owned_by("owner")} == {"123456", "654321"}
    book.release("owner", NOW)
    assert book.owned_by("owner") == []
    assert all(book.get(c).left_at == NOW for c in ("123456", "654321"))  # type: ignore[union-attr]


def test_moving_a_code_to_a_new_owner_forgets_the_old_one() -> None:
    book = CodeBook()
    book.put(pending())
    book.put(replace(pending(), tracked_sid="new"))
    assert book.owned_by("owner") == []
    assert [e.tracked_sid for e in book.owned_by("new")] == ["new"]


def test_the_sweep_forgets_expired_and_retired_codes_only() -> None:
    book = CodeBook()
    book.put(pending())
    book.put(
        PendingCode(
            code="222222", tracked_sid=None, expires_at=NOW, session_token=TOKEN, left_at=NOW
        )
    )
    book.put(PendingCode(code="333333", tracked_sid="x", expires_at=NOW, session_token="cd" * 32))
    assert book.sweep(NOW + CODE_TTL_MS + 1, GRACE) == 2
    assert book.get("333333") is not None and len(book) == 1
    assert book.for_token(TOKEN) is None


STRANGER = "198.51.100.7"


def test_a_paired_code_whose_owner_left_goes_back_only_to_the_owners_address() -> None:
    entry = pending(None, session_token=TOKEN, left_at=NOW)
    assert register(entry, "123456", "s2", STRANGER, NOW + 1, GRACE) == (Claim.IN_USE, entry)
    claim, resumed = register(entry, "123456", "s2", HOME, NOW + 1, GRACE)
    assert claim is Claim.RESUMED and resumed.session_token == TOKEN


def test_a_pending_code_whose_owner_left_goes_back_only_to_the_owners_address() -> None:
    entry = pending(None, left_at=NOW)
    assert register(entry, "123456", "s2", STRANGER, NOW + 1, GRACE) == (Claim.IN_USE, entry)


def test_a_code_of_unknown_address_is_nobodys_to_take_back() -> None:
    entry = replace(pending(None, session_token=TOKEN, left_at=NOW), address=None)
    assert register(entry, "123456", "s2", HOME, NOW + 1, GRACE)[0] is Claim.IN_USE


def test_only_registrations_of_a_held_code_by_another_socket_are_contested() -> None:
    assert not contested(None, "s", NOW, GRACE)
    assert not contested(pending(), "owner", NOW, GRACE)
    assert contested(pending(), "s", NOW, GRACE)
    assert contested(pending(None, left_at=NOW), "s", NOW, GRACE)
    assert not contested(pending(), "s", NOW + CODE_TTL_MS + 1, GRACE)  # expired: free
    retired = pending(None, session_token=TOKEN, left_at=NOW)
    assert not contested(retired, "s", NOW + GRACE + 1, GRACE)


def test_the_book_counts_unexpired_pending_codes_per_address() -> None:
    book = CodeBook()
    book.put(pending())
    book.put(replace(pending(), code="222222", expires_at=NOW + 10))
    book.put(replace(pending(), code="333333", session_token=TOKEN))  # paired: not counted
    assert book.pending_from(HOME, NOW) == 2
    assert book.pending_from(HOME, NOW + 11) == 1
    book.delete("123456")
    assert book.pending_from(HOME, NOW) == 1 and book.pending_from(STRANGER, NOW) == 0
