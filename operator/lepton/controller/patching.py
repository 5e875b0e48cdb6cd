"""Status patches: send only what changed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new` (top-level status keys; None removes a key)."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
