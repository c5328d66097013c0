"""Ray Serve shell: one deployment per pipeline stage plus the HTTP ingress. Each wraps a pure `avatar` stage."""

from pathlib import Path

# The shipped serve config sits at the repository root, beside this package: found from the package's own location
# (source checkout or editable install), never from the working directory or the folder above the checkout.
# Kept here, not in service.config, so the CLI can name it without importing the pipeline.
CONFIG_PATH = Path(__file__).resolve().parent.parent / "serve_config.yaml"
