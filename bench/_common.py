"""Shared by the bench scripts: command line, statistics, the one table, results and plots.

Every script takes ``--quick`` (a smoke run under a minute, what CI runs) and ``--out DIR``
(default ``bench/results``); it prints one table and writes ``<name>[.quick].json`` and
``<name>[.quick].png`` there. Times are ``time.time()`` (one clock for every process and
for the agent's log lines), durations in seconds unless a column says ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:  # run as ``python bench/<name>.py`` from anywhere
    sys.path.insert(0, str(ROOT))


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc)
    p.add_argument("--quick", action="store_true", help="smoke run (< 60 s), what CI runs")
    p.add_argument("--out", type=Path, default=RESULTS, help="where JSON and PNG go")
    p.add_argument("--keep-logs", action="store_true", help="keep the agents' log files")
    return p


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "load_avg_1m": round(load[0], 2),
            "python": platform.python_version(), "platform": platform.platform(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def machine_line() -> str:
    m = machine()
    return (f"{m['cpus']} CPUs (shared), load average {m['load_avg_1m']:.1f}, "
            f"Python {m['python']}")


# -- statistics ---------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50),
            "p90": percentile(values, 90), "p99": percentile(values, 99), "max": max(values),
            "mean": sum(values) / len(values)}


def median(values: Iterable[float]) -> float:
    return percentile([v for v in values if v is not None and not math.isnan(v)], 50)


# -- output ---------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [title] if title else []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                          strict=True)]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def result_paths(out: Path, name: str, quick: bool) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}.quick" if quick else name
    return out / f"{stem}.json", out / f"{stem}.png"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(_clean(data), indent=2) + "\n")


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and inf become null, paths strings, tuples and sets lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def save_plot(draw: Callable[[Any, dict[str, Any]], Any], results: dict[str, Any],
              path: Path) -> None:
    """``draw(pyplot, results)`` makes the figure; saved to ``path`` if matplotlib is there
    (the `bench` extra): the numbers never need it."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"(no plot {path.name}: matplotlib is not installed; pip install -e '.[bench]')")
        return
    plt = pyplot()
    fig = draw(plt, results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def new_log_dir(name: str) -> Path:
    """A fresh directory for the agents' logs, announced with the machine line."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    print(f"{machine_line()}; logs in {work}", flush=True)
    return work


def drop_log_dir(work: Path, keep: bool) -> None:
    """After a run that went through: the logs go unless ``--keep-logs`` (a run that raised
    never gets here and keeps them)."""
    if not keep:
        shutil.rmtree(work, ignore_errors=True)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
