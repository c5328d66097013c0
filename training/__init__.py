"""Custom style training: dataset validation, the learnable colour model, and the Ray Train job that makes tokens."""
