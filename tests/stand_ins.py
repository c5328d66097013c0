"""Stand-ins for running the real ingress and FastAPI app without a cluster: stage handles that call a function."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io

import numpy as np
from PIL import Image


class _Method:
    def __init__(self, fn):
        async def run(args):
            ready = [await a if inspect.isawaitable(a) else a for a in args]   # earlier stages' results, as Serve
            return await fn(*ready)
        self.remote = lambda *args: asyncio.ensure_future(run(args))


class Handle:
    """Stands in for a DeploymentHandle: `handle.run.remote(...)` (or `check`, `keep`) starts `fn` once its arguments
    are ready."""

    def __init__(self, fn):
        self.run = self.check = self.keep = _Method(fn)

    def options(self, **_):
        return self


def blank_photo() -> str:
    """A 256 px black PNG, base64: valid input for the parsing layers, never a face."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
