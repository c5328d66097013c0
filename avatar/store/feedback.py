"""Feedback: whether the platform's user kept or declined an avatar, reported against its request id, and the decline
rate by style and platform that the product tracks (a rising decline rate of a style is the signal to tune it).

Only an account's own delivered avatars take feedback; another account's request id is indistinguishable from an
unknown one. A later report on the same avatar replaces the earlier one (the user changed their mind).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from avatar.errors import NotFound
from avatar.store.credits import DELIVERED
from avatar.store.database import Database

ACCEPTED, DECLINED = "accepted", "declined"
VERDICTS = (ACCEPTED, DECLINED)


@dataclass(frozen=True)
class Feedback:
    request_id: str
    account_id: str
    style: str
    platform: str
    verdict: str
    reason: str | None
    created_at: float


class FeedbackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, account: str, request_id: str, verdict: str, reason: str | None = None) -> Feedback:
        if verdict not in VERDICTS:
            raise ValueError(verdict)
        with self.db.transaction() as tx:
            row = tx.execute("SELECT style, platform FROM avatars WHERE request_id=? AND account_id=? AND state=?",
                             (request_id, account, DELIVERED)).fetchone()
            if row is None:
                raise NotFound(f"no delivered avatar {request_id!r} for this account", field="request_id",
                               code="request_not_found")
            now = time.time()
            tx.execute("INSERT INTO feedback (request_id, account_id, verdict, reason, created_at) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET verdict=excluded.verdict, "
                       "reason=excluded.reason, created_at=excluded.created_at",
                       (request_id, account, verdict, reason, now))
        return Feedback(request_id, account, row[0], row[1], verdict, reason, now)

    def rates(self, since: float = 0.0) -> dict[str, Any]:
        """Accepted and declined counts with the decline rate, by style (custom tokens grouped as `custom`), by
        platform, and by both."""
        with self.db.transaction(write=False) as tx:
            rows = tx.execute("SELECT a.style, a.platform, f.verdict, COUNT(*) FROM feedback f "
                              "JOIN avatars a ON a.request_id = f.request_id WHERE f.created_at >= ? "
                              "GROUP BY a.style, a.platform, f.verdict", (since,)).fetchall()
        return decline_rates((_style_label(style), platform, verdict, int(n)) for style, platform, verdict, n in rows)


def decline_rates(counts) -> dict[str, Any]:
    """`counts`: (style, platform, verdict, n) tuples -> counts and decline rates by style, platform and both."""
    tables: dict[str, dict[str, dict[str, Any]]] = {"by_style": {}, "by_platform": {}, "by_style_platform": {}}
    for style, platform, verdict, n in counts:
        for table, key in (("by_style", style), ("by_platform", platform),
                           ("by_style_platform", f"{style}/{platform}")):
            entry = tables[table].setdefault(key, {ACCEPTED: 0, DECLINED: 0})
            entry[verdict] = entry.get(verdict, 0) + n
    for table in tables.values():
        for entry in table.values():
            total = entry[ACCEPTED] + entry[DECLINED]
            entry["decline_rate"] = round(entry[DECLINED] / total, 4) if total else None
    return tables


def _style_label(style: str) -> str:
    """Custom style tokens are grouped, so the table stays bounded and names no account's token."""
    return "custom" if style.startswith("sty_") else style
