"""Field helpers shared by the contract models: a closed set of names, and fields left out of an answer when unset."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_core import PydanticCustomError


def _known(name: str, value: str | None, allowed) -> str | None:
    if value is not None and value not in allowed:
        raise PydanticCustomError(f"unknown_{name}", "unknown {name} '{value}'; allowed: {allowed}",
                                  {"name": name, "value": value, "allowed": ", ".join(allowed)})
    return value


def _omitted_when_none(description: str) -> Any:
    return Field(None, description=description, exclude_if=lambda value: value is None)
