"""Ray worker setup hook: Ray Serve's own import of pandas is skipped, so Serve itself never loads pandas+pyarrow.

`ray.serve._private.utils` imports pandas whenever it is installed, only to JSON-encode DataFrame responses (this
service returns none). Ray Train puts pandas in the environment and pandas 3 loads pyarrow with it: 66 MB of RSS in
each of the app's 11 Serve processes (README, Performance). The hook hides pandas from that one importer; any other
import of pandas in the same process (a training worker, Ray Data, pyarrow's Parquet writer) loads it as usual.
Written by hand because Ray offers no switch for this import; the hook itself is Ray's
(`runtime_env.worker_process_setup_hook`).
"""

from __future__ import annotations

import importlib.abc
import sys
from types import FrameType

HOOK = "service.serve_imports.skip_pandas_in_serve"   # runtime_env worker_process_setup_hook value
SERVE_UTILS = "ray.serve._private.utils"


class _SkipPandasForServe(importlib.abc.MetaPathFinder):
    """Answers `import pandas` with ModuleNotFoundError while Serve's utils module runs it; nobody else."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" and _imported_from(sys._getframe(1), SERVE_UTILS):
            raise ModuleNotFoundError(f"pandas is not loaded into Ray Serve processes ({__name__})", name=name)
        return None


def _imported_from(frame: FrameType | None, module: str, depth: int = 64) -> bool:
    """Whether `module`'s top level is on the stack (the import machinery's own frames lie in between)."""
    while frame is not None and depth > 0:
        if frame.f_globals.get("__name__") == module:
            return True
        frame, depth = frame.f_back, depth - 1
    return False


def skip_pandas_in_serve() -> None:
    """The setup hook: installs the finder once, first in line."""
    if not any(isinstance(finder, _SkipPandasForServe) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SkipPandasForServe())
