"""The Serve shell's deployments, one module each: the ingress, the job runner and one per pipeline stage
(`deployments/<stage>.py`, its class named as serve_config.yaml names the deployment). `graph.py` binds them."""
