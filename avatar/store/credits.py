"""Credits: balances, grants, the charge of each avatar and team seats, in the service's database.

A generate request of an account *holds* its price before any work (`hold`): one transaction records the request
(`avatars`, keyed by request id) and takes the credits with a conditional `UPDATE ... WHERE balance >= price`, so
concurrent requests from any number of replicas can never overdraw an account, and a request id is charged at most
once (a second hold of the same id returns the first). When the request ends, `settle` keeps the credits of a billable
avatar and gives back those of an unbilled or refused one. A hold whose replica died is given back by
`release_stale`; the job runner settles the holds of batch items (`held`) from each item's final state. Seats: an active seat of (account, external_id) makes the avatar free; otherwise the hold is the seat
price, and the billable avatar opens the seat (or, when a concurrent request opened it first, is given back).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from avatar.errors import InsufficientCredits, InvalidRequest
from avatar.store.database import Database, Tx

HELD, DELIVERED, REFUSED = "held", "delivered", "refused"
MAX_GRANT = 10**12


@dataclass(frozen=True)
class Charge:
    """What a request costs: `held` credits now, `charged` once settled; `balance` after it."""

    request_id: str
    held: int
    charged: int
    balance: int
    state: str
    seat: bool = False        # this request pays for a seat
    covered: bool = False     # an active seat covers it: free


@dataclass(frozen=True)
class Seat:
    account_id: str
    external_id: str
    opened_at: float
    expires_at: float
    request_id: str


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ balances
    def balance(self, account: str) -> int:
        with self.db.transaction(write=False) as tx:
            return _balance(tx, account)

    def grant(self, account: str, amount: int, note: str = "") -> int:
        """Add `amount` credits (a purchase, a correction when negative); returns the new balance. A correction never
        takes the balance below zero."""
        if not isinstance(amount, int) or amount == 0 or abs(amount) > MAX_GRANT:
            raise InvalidRequest(f"amount must be a non-zero integer up to {MAX_GRANT}", field="amount")
        with self.db.transaction() as tx:
            if tx.execute("SELECT 1 FROM accounts WHERE account_id=?", (account,)).fetchone() is None:
                raise KeyError(account)
            tx.execute("INSERT INTO credit_balances (account_id, balance) VALUES (?, 0) "
                       "ON CONFLICT (account_id) DO NOTHING", (account,))
            if tx.execute("UPDATE credit_balances SET balance = balance + ? WHERE account_id=? AND balance + ? >= 0",
                          (amount, account, amount)).rowcount == 0:
                raise InvalidRequest(f"the balance is {_balance(tx, account)}: a correction of {amount} would take "
                                     "it below zero", field="amount")
            tx.execute("INSERT INTO credit_grants (grant_id, account_id, amount, note, created_at) "
                       "VALUES (?, ?, ?, ?, ?)", ("gr_" + secrets.token_hex(8), account, amount, note[:500],
                                                  time.time()))
            return _balance(tx, account)

    def grants(self, account: str, limit: int = 20) -> list[dict]:
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT grant_id, amount, note, created_at FROM credit_grants WHERE account_id=? "
                              "ORDER BY created_at DESC LIMIT ?", (account, limit)).fetchall()
        return [{"grant_id": r[0], "amount": int(r[1]), "note": r[2], "created_at": r[3]} for r in rows]

    # ------------------------------------------------------------ a request's charge
    def hold(self, account: str, request_id: str, style: str, platform: str, price: int,
             external_id: str | None = None, seat_price: int | None = None, seat_s: float | None = None) -> Charge:
        """Record the request and take its price before any work; InsufficientCredits (402) when the balance is short.

        With a seat plan (`seat_price`, `seat_s`) and an `external_id`: free when the id's seat is active, else the
        seat price. Holding a request id again returns its first hold (a retry is never charged twice)."""
        with self.db.transaction() as tx:
            now = tx.now()
            seat, covered, amount = False, False, price
            if seat_price is not None and seat_s and external_id:
                active = tx.execute("SELECT 1 FROM seats WHERE account_id=? AND external_id=? AND expires_at>?",
                                    (account, external_id, now)).fetchone()
                covered, seat, amount = (True, False, 0) if active else (False, True, seat_price)
            inserted = tx.execute(
                "INSERT INTO avatars (request_id, account_id, style, platform, external_id, state, held, charged, "
                "billable, seat_s, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) "
                "ON CONFLICT (request_id) DO NOTHING",
                (request_id, account, style, platform, external_id, HELD, amount, False, seat_s if seat else None,
                 now)).rowcount
            if not inserted:
                return _charge(tx, request_id)
            if amount > 0 and tx.execute("UPDATE credit_balances SET balance = balance - ? "
                                         "WHERE account_id=? AND balance >= ?",
                                         (amount, account, amount)).rowcount == 0:
                balance = _balance(tx, account)
                raise InsufficientCredits(
                    f"this avatar costs {amount} credits and the account has {balance}", field="credits",
                    extra={"credits_required": amount, "credits_remaining": balance})
            return Charge(request_id, amount, 0, _balance(tx, account), HELD, seat=seat, covered=covered)

    def settle(self, request_id: str, billable: bool) -> Charge:
        """End a held request: a billable avatar keeps its credits (and opens its seat), anything else gets them back.
        Settling twice changes nothing."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT account_id, external_id, held, seat_s, state FROM avatars WHERE request_id=?"
                             + tx.for_update, (request_id,)).fetchone()
            if row is None:
                raise KeyError(request_id)
            account, external_id, held, seat_s, state = row[0], row[1], int(row[2]), row[3], row[4]
            if state != HELD:
                return _charge(tx, request_id)
            now = tx.now()
            keep = held if billable else 0
            if billable and seat_s is not None and not _open_seat(tx, account, external_id, request_id, now, seat_s):
                keep = 0   # a concurrent request of the same employee opened the seat first: this one is covered
            if held - keep:
                tx.execute("UPDATE credit_balances SET balance = balance + ? WHERE account_id=?",
                           (held - keep, account))
            tx.execute("UPDATE avatars SET state=?, charged=?, billable=?, settled_at=? WHERE request_id=?",
                       (DELIVERED, keep, bool(billable), now, request_id))
            return _charge(tx, request_id)

    def release(self, request_id: str) -> Charge:
        """A refused or failed request: its credits go back, and it is not a delivered avatar."""
        with self.db.transaction() as tx:
            row = tx.execute("SELECT account_id, held, state FROM avatars WHERE request_id=?" + tx.for_update,
                             (request_id,)).fetchone()
            if row is None:
                raise KeyError(request_id)
            if row[2] == HELD:
                if int(row[1]):
                    tx.execute("UPDATE credit_balances SET balance = balance + ? WHERE account_id=?",
                               (int(row[1]), row[0]))
                tx.execute("UPDATE avatars SET state=?, settled_at=? WHERE request_id=?",
                           (REFUSED, tx.now(), request_id))
            return _charge(tx, request_id)

    def held(self, limit: int = 500) -> list[str]:
        """Request ids whose hold is not settled yet, oldest first (the job runner settles those of finished items)."""
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT request_id FROM avatars WHERE state=? ORDER BY created_at LIMIT ?",
                              (HELD, limit)).fetchall()
        return [r[0] for r in rows]

    def release_stale(self, max_age_s: float) -> int:
        """Give back the holds of requests older than `max_age_s` that never settled (their replica died)."""
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT request_id FROM avatars WHERE state=? AND created_at<?",
                              (HELD, tx.now() - max_age_s)).fetchall()
        for (request_id,) in rows:
            self.release(request_id)
        return len(rows)

    def prune(self, older_than_s: float) -> int:
        """Forget settled requests (and their feedback) older than `older_than_s`; balances, grants and seats stay.
        Returns how many requests were removed. Billing keeps its record in the usage log."""
        with self.db.transaction() as tx:
            cutoff = tx.now() - older_than_s
            tx.execute("DELETE FROM feedback WHERE request_id IN (SELECT request_id FROM avatars "
                       "WHERE state<>? AND created_at<?)", (HELD, cutoff))
            return tx.execute("DELETE FROM avatars WHERE state<>? AND created_at<?", (HELD, cutoff)).rowcount

    def charge(self, request_id: str) -> Charge | None:
        with self.db.transaction(write=False) as tx:
            try:
                return _charge(tx, request_id)
            except KeyError:
                return None

    # ------------------------------------------------------------ seats
    def seats(self, account: str, active_only: bool = True) -> list[Seat]:
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT account_id, external_id, opened_at, expires_at, request_id FROM seats "
                              "WHERE account_id=? AND expires_at>? ORDER BY external_id",
                              (account, tx.now() if active_only else 0.0)).fetchall()
        return [Seat(*r) for r in rows]


def _balance(tx: Tx, account: str) -> int:
    row = tx.execute("SELECT balance FROM credit_balances WHERE account_id=?", (account,)).fetchone()
    return int(row[0]) if row else 0


def _charge(tx: Tx, request_id: str) -> Charge:
    row = tx.execute("SELECT account_id, held, charged, state, seat_s FROM avatars WHERE request_id=?",
                     (request_id,)).fetchone()
    if row is None:
        raise KeyError(request_id)
    held = int(row[1]) if row[3] == HELD else 0
    return Charge(request_id, held, int(row[2]), _balance(tx, row[0]), row[3], seat=row[4] is not None)


def _open_seat(tx: Tx, account: str, external_id: str, request_id: str, now: float, seat_s: float) -> bool:
    """Open (or renew an expired) seat; False when an active one exists already."""
    return tx.execute(
        "INSERT INTO seats (account_id, external_id, opened_at, expires_at, request_id) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (account_id, external_id) DO UPDATE SET opened_at=excluded.opened_at, "
        "expires_at=excluded.expires_at, request_id=excluded.request_id WHERE seats.expires_at <= excluded.opened_at",
        (account, external_id, now, now + seat_s, request_id)).rowcount > 0
