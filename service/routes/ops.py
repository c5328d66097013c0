"""Liveness and this replica's counters."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from service.dependencies import Ingress, Operator
from service.openapi import ERRORS

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/stats", summary="This ingress replica's request counts and gate pass rates; the decline rate by "
                                  "style and platform from every replica's feedback (operator key)",
            responses=ERRORS, dependencies=[Operator])
async def stats(ingress: Ingress) -> dict[str, Any]:
    summary = ingress.telemetry.summary()
    summary["replica"] = ingress.location()
    summary["feedback"] = await asyncio.to_thread(ingress.billing.feedback.rates)
    return summary
