"""AvatarIngress: the HTTP front door as a deployment. The FastAPI app (`service.app`) and the plain `Ingress` class
the routes use (`service.ingress`) are the HTTP layer; this module only makes them a Serve ingress."""

from __future__ import annotations

from ray import serve

from service.app import app
from service.config import INGRESS
from service.ingress import Ingress

AvatarIngress = serve.deployment(name=INGRESS, ray_actor_options={"num_cpus": 0.25},
                                 max_ongoing_requests=64)(serve.ingress(app)(Ingress))
