"""`/v1/webhooks/secret`: the account's Standard Webhooks signing secret, to read and to rotate."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from avatar.contracts import WebhookSecret
from avatar.settings import settings
from service.answers import iso
from service.dependencies import Ingress, RequiredAccount
from service.openapi import ERRORS

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get("/secret", response_model=WebhookSecret, responses=ERRORS,
            summary="The secret that signs this account's webhooks (created on first read)")
async def get_secret(ingress: Ingress, account: RequiredAccount) -> WebhookSecret:
    secret, created = await asyncio.to_thread(ingress.jobs.webhook_secret, account)
    return WebhookSecret(secret=secret, created_at=iso(created))


@router.post("/secret/rotate", response_model=WebhookSecret, responses=ERRORS,
             summary="A new secret; the old one keeps signing beside it for AVATAR_WEBHOOK_SECRET_GRACE_S")
async def rotate_secret(ingress: Ingress, account: RequiredAccount) -> WebhookSecret:
    grace = settings().webhook_secret_grace_s
    secret, created = await asyncio.to_thread(ingress.jobs.rotate_webhook_secret, account, grace)
    return WebhookSecret(secret=secret, created_at=iso(created),
                         previous_valid_until=iso(created + grace) if grace else None)
