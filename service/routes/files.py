"""`/v1/files`: stored avatars and thumbnails behind signed, expiring URLs."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query
from starlette.responses import Response

from avatar.contracts import ErrorResponse
from service.dependencies import Ingress

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get("/{key:path}", summary="A stored avatar or thumbnail (signed URL)", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "The PNG"},
                       403: {"model": ErrorResponse, "description": "Bad or expired signature"},
                       404: {"model": ErrorResponse, "description": "No such file"},
                       422: {"model": ErrorResponse, "description": "Malformed query"}})
@router.head("/{key:path}", include_in_schema=False)
async def get_file(key: str, ingress: Ingress, expires: str | None = Query(None, description="Expiry, epoch seconds"),
                   signature: str | None = Query(None, description="HMAC-SHA256 of key and expiry")) -> Response:
    ingress.signer.verify(key, expires, signature)
    data = await asyncio.to_thread(ingress.storage.get, key)
    ingress.telemetry.served_file()
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
