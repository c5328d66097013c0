"""What routes depend on: the ingress replica serving them, and the caller's account (API key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from ray import serve


def get_ingress() -> Any:
    """The deployment instance of this replica: its handles, configuration and per-replica state."""
    return serve.get_replica_context().servable_object


Ingress = Annotated[Any, Depends(get_ingress)]   # a `service.ingress.Ingress`


async def caller_account(request: Request, ingress: Ingress) -> str | None:
    """The account of the request's API key (None without one); 401 for a wrong key, or for no key when the
    operator set `require_api_key`. Runs before the body is read."""
    if ingress.config.require_api_key:
        return await ingress.auth.require(request.headers)
    return await ingress.auth.account(request.headers)


async def required_account(request: Request, ingress: Ingress) -> str:
    """The account of the request's API key; 401 without a valid one."""
    return await ingress.auth.require(request.headers)


Account = Annotated[str | None, Depends(caller_account)]
RequiredAccount = Annotated[str, Depends(required_account)]
