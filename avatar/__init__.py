"""Avatar generation core: image in, avatar out. Knows nothing of Ray; the serving shell lives in `deployments/`."""

__version__ = "0.1.0"
