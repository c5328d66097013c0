"""The HTTP API: one FastAPI app, one router per resource, one error mapping, a generated OpenAPI document.

Routes are plain functions (`service/routes/`); `deployments.ingress.AvatarIngress` serves this app through
`@serve.ingress` and gives routes its handles and configuration through `service.dependencies`.
"""

from __future__ import annotations

from fastapi import FastAPI

from avatar import __version__
from service import errors, openapi
from service.account_headers import AccountHeaders
from service.routes import account, avatar, batches, files, jobs, ops, styles, webhooks

app = FastAPI(
    title="Avatar generation service",
    version=__version__,
    description="Turn a casual photo into a platform-ready profile picture. Errors are JSON "
                "`{\"error\": {\"code\", \"message\", \"field\"}}`; `Authorization: Bearer <api key>` identifies "
                "the account.",
    docs_url="/docs",
    redoc_url=None,
)
ROUTERS = (avatar.router, jobs.router, batches.router, webhooks.router, styles.router, account.router, files.router,
           ops.router)
for router in ROUTERS:
    app.include_router(router)
app.add_middleware(AccountHeaders)
errors.install(app)
openapi.install(app, ROUTERS)
