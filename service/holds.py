"""Credit holds of job items (jobs accepted with credit terms): taken before an item's work, settled once its outcome
is recorded, given back when it fails or is canceled. A hold whose item ended without its runner settling it (a
cancel, a claim that failed the item after too many interruptions, a runner that died) is settled by a sweep from the
item's final state, so no path keeps a customer's credits."""

from __future__ import annotations

import asyncio
import logging

from avatar.job import AvatarJob
from avatar.store.credits import Ledger
from avatar.store.jobs import CANCELED, FAILED, SUCCEEDED, ItemRecord, JobRecord, JobStore

log = logging.getLogger("avatar.runner")


class ItemHolds:
    """The ledger calls of job items; every method is a no-op for a job without credit terms or without a ledger."""

    def __init__(self, ledger: Ledger | None) -> None:
        self.ledger = ledger

    def applies(self, job: JobRecord) -> bool:
        return self.ledger is not None and bool(job.params.get("billing"))

    async def hold(self, job: JobRecord, item: ItemRecord, avatar: AvatarJob) -> None:
        """Raises the ledger's 402 when the account has too few credits."""
        if self.applies(job):
            terms = job.params["billing"]
            await asyncio.to_thread(self.ledger.hold, job.account, item.request_id, avatar.style, avatar.platform,
                                    terms["price"], external_id(job, item), terms.get("seat_price"),
                                    terms.get("seat_s"))

    async def settle(self, job: JobRecord, item: ItemRecord, billable: bool) -> int:
        """The credits charged (0 when not billable, or when settling failed: the sweep settles it later)."""
        if not self.applies(job):
            return 0
        try:
            return (await asyncio.to_thread(self.ledger.settle, item.request_id, billable)).charged
        except Exception:  # noqa: BLE001 - the outcome is recorded; the hold sweep settles it from the item later
            log.exception("item %s/%s: settling its credits failed", item.job_id, item.idx)
            return 0

    async def release(self, job: JobRecord, item: ItemRecord) -> None:
        if self.applies(job):
            try:
                await asyncio.to_thread(self.ledger.release, item.request_id)
            except KeyError:   # refused before its hold (e.g. too few credits): nothing to give back
                pass

    async def settle_lost(self, job: JobRecord, item: ItemRecord | None) -> None:
        """An item the runner lost (canceled, or taken over): settled from its state now if it ended."""
        if item is not None and self.applies(job):
            await asyncio.to_thread(settle_from_item, self.ledger, item)

    def settle_unsettled(self, store: JobStore) -> int:
        """Settle every hold whose item has ended, from the item's final state; returns how many."""
        if self.ledger is None:
            return 0
        held = self.ledger.held()
        items = store.items_by_request(held) if held else []
        return sum(settle_from_item(self.ledger, item) for item in items)


def settle_from_item(ledger: Ledger, item: ItemRecord) -> bool:
    """Settle an item's hold from its final state: a succeeded item keeps the credits of a billable avatar, a failed
    or canceled one gets them back; an item still queued or running (another runner has it) is left alone. True when
    a hold was settled here."""
    try:
        if item.state == SUCCEEDED:
            ledger.settle(item.request_id, item.billable)
        elif item.state in (FAILED, CANCELED):
            ledger.release(item.request_id)
        else:
            return False
    except KeyError:   # no hold: credits off, or refused before it
        return False
    return True


def external_id(job: JobRecord, item: ItemRecord) -> str | None:
    """The person an item is for: a batch member's id, or an async generate's `external_id` field."""
    return item.external_id or (job.params.get("billing") or {}).get("external_id")


__all__ = ["ItemHolds", "external_id", "settle_from_item"]
