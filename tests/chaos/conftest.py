"""Chaos soak fixtures and reporting.

    CHAOS_SEED=1234 CHAOS_SECONDS=600 pytest tests/chaos -m chaos

``CHAOS_SEED`` picks the fault schedule and the event stream (default: a fresh random seed,
printed); ``CHAOS_SECONDS`` how long faults are dealt (default 60, what CI runs). The seed
is printed when the soak starts, heads its figures table (shown in the terminal summary and
written as ``chaos-report.json`` in the test's tmp dir) and is added to every failure
report, so any run can be replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from intake_server import LocalIntake
from soakreport import PUBLISHED
from soakrig import Soak, SoakSettings

from kubesim.runner import KubeSim


@pytest.fixture
def soak_settings() -> SoakSettings:
    return SoakSettings.from_env()


@pytest.fixture
def soak(make_kubesim: Callable[..., KubeSim], tmp_path: Path,
         soak_settings: SoakSettings) -> Iterator[Soak]:
    print(f"\nchaos soak: {soak_settings.replay()} (replay with these variables)")
    sim = make_kubesim(bookmark_interval=1.0)
    with LocalIntake() as intake:
        rig = Soak(sim, intake, tmp_path, soak_settings)
        try:
            yield rig
        finally:
            rig.fleet.__exit__(None, None, None)  # SIGKILL whatever is left
            rig.stream._stop.set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and item.get_closest_marker("chaos") is not None:
        report.sections.append(("chaos replay", SoakSettings.from_env().replay()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for table in PUBLISHED:
        terminalreporter.write_sep("=", "chaos soak figures")
        terminalreporter.write(table)
