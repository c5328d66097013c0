"""The account as a business: its balance and plan (`/v1/account`), its usage for invoices (`/v1/usage`, JSON or
CSV, from the usage log), and feedback on its delivered avatars (`/v1/avatar/{request_id}/feedback`).

Every route needs the account's API key and sees only the account's own rows and request ids; another account's
request id answers 404 exactly like an unknown one. Blocking reads (database, usage log) run in worker threads.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from avatar.catalog.platforms import BUILTIN_STYLES
from avatar.contracts import REQUEST_ID_RE, AccountView, FeedbackRequest, FeedbackView, UsageExport, UsageRow
from avatar.errors import InvalidRequest, NotFound
from avatar.store.usage import FEEDBACK, MAX_EXPORT_ROWS, read_usage
from service.dependencies import Ingress, RequiredAccount
from service.http import BodyOf, BodyReader
from service.openapi import ERRORS

router = APIRouter(tags=["account"])

MAX_RANGE = timedelta(days=366)
DEFAULT_RANGE = timedelta(days=31)
CSV_COLUMNS = list(UsageRow.model_fields)
FEEDBACK_MAX_BODY = 16 * 1024


@router.get("/v1/account", response_model=AccountView, responses=ERRORS,
            summary="The account's plan, credit balance, prices and rate limit")
async def get_account(ingress: Ingress, account: RequiredAccount) -> AccountView:
    return await asyncio.to_thread(_account_view, ingress, account)


@router.get("/v1/usage", response_model=UsageExport, responses={**ERRORS, 200: {
    "content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}},
    "description": "The account's usage rows (JSON, or CSV with format=csv)"}},
            summary="The account's usage for invoices: one row per generate request, from the usage log")
async def usage(request: Request, ingress: Ingress, account: RequiredAccount,
                start: str | None = Query(None, alias="from", max_length=40,
                                          description="inclusive; ISO date or date-time (UTC unless an offset is "
                                                      "given); default: 31 days before `to`"),
                end: str | None = Query(None, alias="to", max_length=40,
                                        description="exclusive; ISO date or date-time; default: now"),
                format: str = Query("json", max_length=10, description="json or csv"),
                limit: int = Query(MAX_EXPORT_ROWS, ge=1, le=MAX_EXPORT_ROWS)) -> Any:
    """Rows appear once the ingress replica that served them flushed its log (`usage_flush_interval_s`)."""
    if format not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", field="format", code="invalid_format")
    until = _instant(end, "to") if end else datetime.now(timezone.utc)
    since = _instant(start, "from") if start else until - DEFAULT_RANGE
    if since >= until:
        raise InvalidRequest("'from' must be before 'to'", field="from", code="invalid_range")
    if until - since > MAX_RANGE:
        raise InvalidRequest(f"at most {MAX_RANGE.days} days per export; ask for shorter ranges", field="from",
                             code="range_too_long")
    table = await asyncio.to_thread(read_usage, ingress.usage_uri, account, since, until, None, FEEDBACK,
                                    limit + 1)
    rows = [_usage_row(r) for r in table.to_pylist()]
    truncated = len(rows) > limit
    rows = rows[:limit]
    if format == "csv":
        return Response(_csv(rows), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="usage-{account}-{since:%Y%m%d}-{until:%Y%m%d}.csv"',
            "X-Usage-Truncated": str(truncated).lower()})
    return UsageExport.model_validate({
        "account_id": account, "from": since.isoformat(), "to": until.isoformat(), "rows": rows,
        "truncated": truncated, "summary": {
            "requests": len(rows), "delivered": sum(r["outcome"] == "delivered" for r in rows),
            "billable": sum(bool(r["billable"]) for r in rows), "credits": sum(r["credits"] for r in rows)}})


FEEDBACK_BODY = BodyOf(FeedbackRequest)


@router.post("/v1/avatar/{request_id}/feedback", response_model=FeedbackView, responses=ERRORS,
             tags=["avatar"],
             summary="Report whether the user kept (accepted) or declined a delivered avatar")
async def feedback(request_id: str, ingress: Ingress, account: RequiredAccount,
                   raw: Annotated[BodyReader, Depends(FEEDBACK_BODY)]) -> FeedbackView:
    """A later report on the same avatar replaces the earlier one. Decline rates by style and platform are in
    `/v1/stats` and in the usage log."""
    if not REQUEST_ID_RE.match(request_id):
        raise NotFound("no delivered avatar with this request id for this account", field="request_id",
                       code="request_not_found")
    body: FeedbackRequest = raw.parse((await raw.read(FEEDBACK_MAX_BODY)).fields)
    saved = await asyncio.to_thread(ingress.billing.feedback.record, account, request_id, body.verdict, body.reason)
    ingress.telemetry.feedback(saved.request_id, account, saved.style, saved.platform, saved.verdict, saved.reason)
    return FeedbackView(request_id=saved.request_id, verdict=saved.verdict, reason=saved.reason, style=saved.style,
                        platform=saved.platform, recorded_at=saved.created_at)


# ---------------------------------------------------------------- helpers
def _account_view(ingress: Any, account: str) -> AccountView:
    record = ingress.auth.store.get_account(account)
    config = ingress.config.accounts
    plan_name = record.plan if record and record.plan in config.plans else config.default_plan
    plan = config.plans[plan_name]
    ledger = ingress.billing.ledger
    prices = {style: plan.cost(style, False) for style in BUILTIN_STYLES} | {"custom": plan.cost("", True)}
    return AccountView(account_id=account, name=record.name if record else "", plan=plan_name,
                       credits_enabled=config.credits, balance=ledger.balance(account),
                       requests_per_minute=plan.requests_per_minute, burst=plan.burst, prices=prices,
                       seat_credits=plan.seat_credits, seat_days=plan.seat_days if plan.seat_credits else None,
                       active_seats=len(ledger.seats(account)))


def _instant(text: str, field: str) -> datetime:
    """An ISO date (midnight UTC) or date-time, in UTC: naive times are UTC, others are converted from their offset
    (the log's rows and date partitions are UTC)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(f"'{field}' must be an ISO date (2026-03-01) or date-time (2026-03-01T12:00:00Z)",
                             field=field, code="invalid_date") from None
    if not 2000 <= value.year <= 2200:
        raise InvalidRequest(f"'{field}' is out of range", field=field, code="invalid_date")
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _usage_row(row: dict[str, Any]) -> dict[str, Any]:
    created = row["created_at"]
    return {"request_id": row["request_id"], "created_at": created.astimezone(timezone.utc).isoformat(),
            "style": row["style"], "platform": row["platform"], "external_id": row["external_id"],
            "outcome": row["outcome"], "billable": bool(row["billable"]), "credits": int(row["credits"] or 0),
            "attempts": int(row["attempts"] or 0), "latency_ms": float(row["latency_ms"] or 0.0)}


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR) is quoted with a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
