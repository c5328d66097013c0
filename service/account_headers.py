"""The account's rate-limit and credit decisions (from `service.billing.Billing`) as `X-RateLimit-*` and
`X-Credits-*` headers on whatever answer the request gets, error answers included: routes and dependencies note
them on the request's state, `AccountHeaders` writes them when the answer starts."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avatar.errors import InsufficientCredits
from service.billing import RateCheck

RATE_STATE, CREDIT_STATE = "rate_limit", "credits"


class _Refused:
    """The credits state of a request refused for its balance: nothing charged, the balance as it is."""

    def __init__(self, balance: int) -> None:
        self.charged, self.held, self.balance = 0, 0, balance


def note_rate(request: Request, check: RateCheck | None) -> None:
    """Show the rate decision on the answer, and raise its 429 when over the limit."""
    if check is None:
        return
    setattr(request.state, RATE_STATE, check.decision)
    if check.refusal is not None:
        raise check.refusal


def note_credits(request: Request, shown: bool, charge: Any) -> Any:
    """Show the charge on the answer when credits are on (`shown`); answers the charge."""
    if shown and charge is not None:
        setattr(request.state, CREDIT_STATE, charge)
    return charge


def note_refused(request: Request, exc: InsufficientCredits) -> None:
    """A 402 shows nothing charged and the balance it found."""
    setattr(request.state, CREDIT_STATE, _Refused(int(exc.extra.get("credits_remaining", 0))))


def credit_headers(charge: Any) -> dict[str, str]:
    """`X-Credits-Charged` (final, or held while the request runs) and `X-Credits-Remaining`."""
    return {"X-Credits-Charged": str(charge.charged or charge.held), "X-Credits-Remaining": str(charge.balance)}


class AccountHeaders:
    """ASGI middleware: the request's rate-limit and credit decisions as headers on whatever answer it gets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state") or {}
                extra: dict[str, str] = {}
                if state.get(RATE_STATE) is not None:
                    extra.update(state[RATE_STATE].headers())
                if state.get(CREDIT_STATE) is not None:
                    extra.update(credit_headers(state[CREDIT_STATE]))
                if extra:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []),
                                          *((k.lower().encode(), v.encode()) for k, v in extra.items())]
            await send(message)

        await self.app(scope, receive, send_with_headers)
