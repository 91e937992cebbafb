"""The chaos soak (issue 8): three replicas, a steady event stream, seeded random faults.

For ``CHAOS_SECONDS`` (60 in CI) faults are dealt from a seeded deck — worker SIGKILL,
supervisor SIGKILL / SIGTERM (restarted), API 500s/429s, dropped watches, an API pause
longer than the renew deadline, the leader alone cut off from the API (partition), the
intake failing then down, compaction (410 Gone), SIGHUP with a valid and with a broken
datadog.yaml — each followed by a wait (on a deadline) until the cluster has recovered and
caught up. Invariants are sampled continuously (worker overlap every 10 ms from a process of
its own; tokens, the commit point and every lock write from kubesim; orphans; memory) and
the figures end up in one table; then every invariant is asserted at once.

    CHAOS_SEED=<seed> CHAOS_SECONDS=600 pytest tests/chaos -m chaos     # a long soak
    CHAOS_LOG_LEVEL=debug ...                                           # replicas' log level
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from attribution import attribute
from faultdeck import FaultDeck
from invariants import broken
from soakreport import PUBLISHED, figures, render
from soakrig import Soak, SoakSettings

SETTINGS = SoakSettings.from_env()


def deal_faults(soak: Soak, rng: random.Random) -> None:
    s = soak.settings
    deck = FaultDeck(rng)
    end = time.monotonic() + s.seconds
    n = 0
    while time.monotonic() < end:
        _kind, fault = deck.deal()
        n += 1
        record = fault(soak, rng, n)
        soak.faults.append(record)
        soak.wait_recovered(record)
        # The schedule's breathing space between faults (seeded), cut short at the end.
        time.sleep(min(rng.uniform(0.5, 2.0), max(0.0, end - time.monotonic())))


@pytest.mark.chaos
@pytest.mark.timeout(SETTINGS.seconds + 240)
def test_soak_loses_nothing_and_keeps_every_guarantee(soak: Soak, tmp_path: Path) -> None:
    s = soak.settings
    wall0 = time.monotonic()
    rng = random.Random(s.seed)
    soak.start()
    t_faults = time.monotonic()
    soak_s = drain_s = 0.0
    leftovers: list[Any] = []
    error: BaseException | None = None
    try:
        deal_faults(soak, rng)
        soak_s = time.monotonic() - t_faults
        drain_s = soak.drain()
        soak.stop_all()
    except BaseException as exc:  # report the figures gathered so far, then fail
        error = exc
    finally:
        soak.stop_watchers()
    if error is None:
        leftovers = soak.leftovers()
    figs = figures(soak, attribute(soak), soak_s=soak_s, drain_s=drain_s,
                   wall_s=time.monotonic() - wall0, leftovers=leftovers)
    table = render(figs)
    print(table)
    PUBLISHED.append(table)
    report = tmp_path / "chaos-report.json"
    report.write_text(json.dumps(figs, indent=2, default=str))
    print(f"figures written to {report}")
    if error is not None:
        raise error
    problems = broken(figs, s)
    if problems:  # raised, not asserted: pytest would abbreviate the list
        raise soak.fail("invariants broken:\n  - " + "\n  - ".join(problems))
