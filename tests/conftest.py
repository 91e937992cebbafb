"""Shared fixtures: kubesim in-process (127.0.0.1, port 0) and kubectl against it.

``kubesim``      a fresh KubeSim per test (plain HTTP, admin token; bookmarks every 0.2 s)
``kubesim_tls``  the same over HTTPS: what kubectl needs to send a bearer token at all
``make_kubesim`` a factory for custom settings: ``make_kubesim(history=5, event_ttl=1)``
``kubectl``      ``kubectl(sim, "get", "cm", token=None, check=True, stdin=None)``
                 -> CompletedProcess; skips the test when no kubectl is on PATH
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubesim.runner import KubeSim

FAST_BOOKMARKS = 0.2


@pytest.fixture
def make_kubesim() -> Iterator[Callable[..., KubeSim]]:
    started: list[KubeSim] = []

    def make(**kwargs: Any) -> KubeSim:
        kwargs.setdefault("bookmark_interval", FAST_BOOKMARKS)
        sim = KubeSim(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in reversed(started):
        sim.stop()


@pytest.fixture
def kubesim(make_kubesim: Callable[..., KubeSim]) -> KubeSim:
    return make_kubesim()


@pytest.fixture
def kubesim_tls(make_kubesim: Callable[..., KubeSim]) -> KubeSim:
    return make_kubesim(tls=True)


@pytest.fixture(scope="session")
def kubectl_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kubectl-cache")


@pytest.fixture
def kubectl(kubectl_cache: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not on PATH")

    def run(sim: KubeSim, *args: str, token: str | None = None, check: bool = True,
            stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        config = sim.kubeconfig if token is None else sim.kubeconfig_for(token)
        env = dict(os.environ, KUBECACHEDIR=str(kubectl_cache), HOME=str(kubectl_cache))
        result = subprocess.run(
            [binary, "--kubeconfig", config, *args], input=stdin, capture_output=True,
            text=True, env=env, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    return run
