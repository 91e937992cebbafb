"""kubesim: a local Kubernetes API server emulator for tests and the no-cluster demo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["KubeSim"]

if TYPE_CHECKING:
    from kubesim.runner import KubeSim


def __getattr__(name: str) -> Any:
    # Lazy, so ``import kubesim.requestinfo`` stays light (no aiohttp, no kubernetes client).
    if name == "KubeSim":
        from kubesim.runner import KubeSim

        return KubeSim
    raise AttributeError(f"module 'kubesim' has no attribute {name!r}")
