"""The bench scripts still run: each one's ``--quick`` mode (or small counts), as a real process.

Checks that every script exits 0, prints its table and writes sane figures (events not lost,
orders of magnitude that hold on any machine). Never a timing target: CI boxes are slow
and shared.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def run_quick(name: str, out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "----" in proc.stdout  # the table
    if importlib.util.find_spec("matplotlib") is not None:  # the `bench` extra draws plots
        assert (out / f"{name}.quick.png").stat().st_size > 1000
    else:
        assert "matplotlib is not installed" in proc.stdout
    return json.loads((out / f"{name}.quick.json").read_text())


@pytest.mark.timeout(300)
def test_handover(tmp_path: Path) -> None:
    doc = run_quick("bench_handover", tmp_path)
    (lease, runs), = doc["leases"].items()
    graceful, crash, worker = runs["graceful"][0], runs["crash"][0], runs["worker"][0]
    # A release hands over before a lease could expire; a crash waits for the expiry.
    assert 0 < graceful["lock moved"] < float(lease)
    assert graceful["lock moved"] < graceful["worker up"] < graceful["1st event"]
    assert 0.5 * float(lease) < crash["lock moved"] < 3 * float(lease)
    assert crash["lock moved"] < crash["1st event"]
    assert 0 < worker["heartbeat"] < worker["1st event"]
    assert graceful["dup"] == 0
    assert runs["integrity"]["lost"] == 0
    assert all(v > 0 for v in doc["preload"].values())


@pytest.mark.timeout(300)
def test_api_load(tmp_path: Path) -> None:
    doc = run_quick("bench_api_load", tmp_path)
    (_, run_), = doc["runs"].items()
    groups = run_["groups"]
    assert all(g["stable"] for g in groups.values())
    for n in (3, 30):
        # Watching followers send (almost) nothing; polling ones one GET per retry period.
        assert groups[f"watch{n}"]["follower_rpm_mean"] < groups[f"poll{n}"]["follower_rpm_mean"]
        assert groups[f"watch{n}"]["leader_rpm"] > 0
    assert groups["real3"]["leader_rpm"] > groups["real3"]["follower_rpm_mean"]
    assert run_["handover"]
    assert run_["crash"]


@pytest.mark.timeout(300)
def test_latency(tmp_path: Path) -> None:
    doc = run_quick("bench_latency", tmp_path)
    for r in doc["runs"]:
        assert r["written"] > 100
        assert r["lost"] == 0
        assert r["delivered"] == r["written"]
        assert 0 < r["latency_s"]["p50"] <= r["latency_s"]["p99"]


@pytest.mark.timeout(300)
def test_pods(tmp_path: Path) -> None:
    doc = run_quick("bench_pods", tmp_path)
    idle = doc["memory"]["idle"]
    assert idle["leader"]["uss"] > idle["follower"]["uss"] > 0
    assert {"supervisor", "events", "controlplane"} <= set(idle["leader"]["by_process"])
    assert doc["memory"]["load"]["delivered"] == doc["memory"]["load"]["written"]
    start = doc["startup"][0]
    assert 0 < start["ready"] < start["1st event"]


@pytest.mark.timeout(300)
def test_throughput_writers(tmp_path: Path) -> None:
    doc = run_quick("bench_throughput_writers", tmp_path)
    assert [r["writers"] for r in doc["live"]] == [1, 10, 100]
    for r in doc["live"]:
        assert r["lost"] == 0
        assert r["delivered"] == r["events"]
        assert r["delivery_rate"] > 0
    assert doc["backlog"]["lost"] == 0
    assert doc["ceiling"]["rate"] > 0


def run_small(name: str, *args: str) -> str:
    """A bench script without --quick, run with small counts; its stdout."""
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.timeout(300)
def test_events() -> None:
    """bench_events has no --quick: small counts instead. Every pipeline's row, the CPU
    budget, the 410 catch-up and the RSS run are printed."""
    out = run_small("bench_events", "-n", "3000", "--naive-n", "200", "--rss-n", "2000",
                    "--backlog", "500", "--repeat", "1")
    rows = {line[:32].strip(): line[32:].split() for line in out.splitlines()
            if line.startswith(("ceiling:", "ours", "naive:"))}
    assert set(rows) == {"ceiling: read + orjson.loads", "ours (workers.events)",
                         "ours, default GC", "naive: V1Event + POST each"}
    for name, cells in rows.items():
        # events/s, seconds, x naive, % ceiling, cpu, sim, intake, budget/s, budget %
        assert len(cells) == 9, (name, cells)
        assert float(cells[0]) > 0, (name, cells)
        assert float(cells[7]) > 0, (name, cells)
    assert rows["ceiling: read + orjson.loads"][6] == "-"  # the ceiling posts nothing
    float(rows["ours (workers.events)"][6])  # the intake's CPU is a figure, not "-"
    assert "budget/s: " in out
    assert "500 new events behind a compacted token" in out
    assert "(1 re-list)" in out
    assert "RSS of the events worker while 2000 events pass" in out


@pytest.mark.timeout(300)
def test_memory() -> None:
    out = run_small("bench_memory", "--settle", "0.2")
    assert "failed" not in out
    pods = [line for line in out.splitlines() if line.startswith("== ")]
    assert len(pods) == 5, out
    totals = [float(line.split()[1]) for line in out.splitlines() if line.startswith("total")]
    assert len(totals) == 5, out
    assert all(0 < uss < 1000 for uss in totals), totals


@pytest.mark.timeout(120)
def test_bundles() -> None:
    out = run_small("bench_bundles", "-n", "1000", "--repeat", "1")
    rows = [line.split() for line in out.splitlines() if line.startswith(("bundled", "unbundled"))]
    assert len(rows) == 4, out
    # mode, zlib level, Datadog events, payload MB, zlib MB, then six rates (events/s)
    assert all(float(row[2]) > 0 for row in rows), rows
    assert all(float(cell) > 0 for row in rows for cell in row[-6:]), rows


@pytest.mark.timeout(120)
def test_kubesim() -> None:
    out = run_small("kubesim_bench", "--events", "1000", "--writes", "100", "--watchers", "5",
                    "--watched-writes", "50")
    assert "events delivered to watchers" in out
    delivered = next(line for line in out.splitlines() if "events delivered to watchers" in line)
    assert delivered.split()[-1] == "250"  # each of 5 watchers saw all 50 writes
