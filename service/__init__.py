"""Ray Serve shell: one deployment per pipeline stage plus the HTTP ingress. Each wraps a pure `avatar` stage."""
