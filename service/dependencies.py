"""What routes depend on: the ingress replica serving them, and the caller's account (API key)."""

from __future__ import annotations

from typing import Annotated, Any

import hmac

from fastapi import Depends, Request
from ray import serve

from avatar.errors import Forbidden, Unauthorized
from service.account_headers import note_rate
from service.auth import bearer_key


def get_ingress() -> Any:
    """The deployment instance of this replica: its handles, configuration and per-replica state."""
    return serve.get_replica_context().servable_object


Ingress = Annotated[Any, Depends(get_ingress)]   # a `service.ingress.Ingress`


async def caller_account(request: Request, ingress: Ingress) -> str | None:
    """The account of the request's API key (None without one); 401 for a wrong key, or for no key when the
    operator set `require_api_key`; 429 over the account's rate limit. Runs before the body is read."""
    if ingress.config.require_api_key:
        account = await ingress.auth.require(request.headers)
    else:
        account = await ingress.auth.account(request.headers)
    await _limit(request, ingress, account)
    return account


async def _limit(request: Request, ingress: Any, account: str | None) -> None:
    note_rate(request, await ingress.billing.limit(account, request.client.host if request.client else None))


async def required_account(request: Request, ingress: Ingress) -> str:
    """The account of the request's API key; 401 without a valid one; 429 over its rate limit."""
    account = await ingress.auth.require(request.headers)
    await _limit(request, ingress, account)
    return account


async def operator(request: Request, ingress: Ingress) -> None:
    """Operator routes: `Authorization: Bearer <AVATAR_OPERATOR_KEY>`; 401 for anything else, 403 when no operator
    key is configured (the route is then closed to everyone)."""
    if not ingress.operator_key:
        raise Forbidden("operator routes are off: set AVATAR_OPERATOR_KEY", field="authorization",
                        code="operator_routes_disabled")
    key = bearer_key(request.headers)
    if key is None or not hmac.compare_digest(key.encode(), ingress.operator_key):
        raise Unauthorized("this route needs the operator key: send 'Authorization: Bearer <operator key>'",
                           field="authorization", code="operator_key_required")


Account = Annotated[str | None, Depends(caller_account)]
RequiredAccount = Annotated[str, Depends(required_account)]
Operator = Depends(operator)
