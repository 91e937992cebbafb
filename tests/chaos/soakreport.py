"""The soak's figures: one dict (written as JSON) and one printed table.

``figures(soak, triggers, ...)`` gathers everything measured; ``render(figures)`` is the
table a maintainer reads (seed first, so a failure can be replayed).
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from typing import Any

from attribution import Trigger
from leasecheck import lock_overlaps, outlived_leases
from rich.console import Console
from rich.table import Table
from soakrig import Soak

__all__ = ["PUBLISHED", "RSS_LIMITS_MB", "figures", "render"]

PUBLISHED: list[str] = []
"""Rendered tables, printed by the chaos conftest in the terminal summary."""

RSS_LIMITS_MB = {"supervisor": 200, "events": 250, "controlplane": 250, "helper": 200}
"""Per-process ceilings (the pool itself kills a worker over worker_memory_limit_mb = 256)."""


def _causes(triggers: list[Trigger]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"triggers": 0, "duplicates": 0, "bound": 0, "max_per_trigger": 0,
                 "over_bound": 0})
    for t in triggers:
        cause = t.cause.split(" (")[0]
        row = out[cause]
        row["triggers"] += 1
        row["duplicates"] += t.duplicates
        row["bound"] += t.bound
        row["max_per_trigger"] = max(row["max_per_trigger"], t.duplicates)
        row["over_bound"] += t.duplicates > t.bound or t.outside_exposure > 0
    return dict(out)


def figures(soak: Soak, triggers: list[Trigger], *, soak_s: float, drain_s: float,
            wall_s: float, leftovers: list[Any]) -> dict[str, Any]:
    s = soak.settings
    ledger, procs = soak.ledger, soak.processes
    written, acked = ledger.counts()
    faults = soak.faults
    by_kind = Counter(f.kind for f in faults)
    recovery: dict[str, float] = {}
    for f in faults:
        if f.recovered is not None:
            recovery[f.kind] = max(recovery.get(f.kind, 0.0), round(f.recovered - f.started, 2))
    pauses = [f for f in faults if f.kind == "api_pause"]
    fenced = [f.facts["fenced_s"] for f in pauses if f.facts.get("fenced_s") is not None]
    sup_faults = [f for f in faults if f.kind.startswith("supervisor_")]
    extra = ledger.extra_copies()
    return {
        "seed": s.seed, "replay": s.replay(),
        "settings": {"seconds": s.seconds, "lease_s": s.lease_s, "checkpoint_s": s.checkpoint_s,
                     "heartbeat_s": s.heartbeat_s, "batch_max": s.batch_max,
                     "flush_s": s.flush_s, "rate": s.rate,
                     "checkpoint_slack_s": s.checkpoint_slack_s},
        "time": {"soak_s": round(soak_s, 1), "drain_s": round(drain_s, 1),
                 "wall_s": round(wall_s, 1)},
        "faults": {"total": len(faults), "by_kind": dict(sorted(by_kind.items()))},
        "fault_log": [f.row(soak.t0) for f in faults],
        "occurrences": {"written": written, "new": soak.stream.written_new,
                        "repeats": soak.stream.written_repeats, "acknowledged": acked,
                        "lost": written - acked, "phantoms": sum(ledger.phantoms.values()),
                        "lost_sample": [f"ck{o.eid}-{o.count} rv {o.rv}"
                                        for o in ledger.lost()[:10]]},
        "intake": {"payloads": ledger.payloads, "datadog_events": ledger.datadog_events,
                   "by_sender": dict(sorted(ledger.senders.items()))},
        "duplicates": {"total": len(extra), "distinct": len({o.key for o, _ in extra}),
                       "by_cause": _causes(triggers),
                       "triggers": [t.row(soak.t0) for t in triggers]},
        "commit_violations": ledger.commit_violations[:10],
        "commit_violation_count": len(ledger.commit_violations),
        "token": {"configmap_changes": len(soak.cluster.token_changes),
                  "configmap_regressions": soak.cluster.token_regressions,
                  "in_memory_regressions": soak.health.token_regressions},
        "overlap": {"instants": procs.overlap_count,
                    "workers_unseen": sorted(
                        soak.health.workers_seen
                        - {(r.replica, r.name, r.pid) for r in procs.worker_runs}),
                    "first": procs.overlaps[:3],
                    "samples": procs.samples, "gap_ms_p50": procs.gap_ms.get("p50"),
                    "gap_ms_p99": procs.gap_ms.get("p99"), "gap_ms_max": procs.gap_ms.get("max"),
                    "gaps_over_20ms": procs.gap_ms.get("over_20ms"),
                    "sampler_cpu_s": procs.cpu_s},
        "orphans": {"continuous": procs.orphans,
                    "after_supervisor_faults": {f"#{f.n} {f.kind}": f.facts.get("left_behind")
                                                for f in sup_faults},
                    "after_final_stop": [pid for pid, _ in leftovers]},
        "exit_codes": {"final_sigterm": soak.exit_codes,
                       "supervisor_faults": {f"#{f.n} {f.kind}": f.facts.get("exit_code")
                                             for f in sup_faults}},
        "early_takeovers": soak.cluster.early_takeovers,
        "lease": {"outlived": outlived_leases(soak.cluster.lock_writes, procs.worker_runs,
                                              soak.t0),
                  "overlapped": lock_overlaps(soak.cluster.lock_writes, procs.worker_runs,
                                              soak.t0)},
        "leadership": {"holder_changes": len(soak.cluster.holder_changes),
                       "lock_writes": len(soak.cluster.lock_writes),
                       "events_worker_runs": sum(1 for r in procs.worker_runs
                                                 if r.name == "events"),
                       "pauses_fenced": f"{len(fenced)}/{len(pauses)}",
                       "fence_s_max": max(fenced, default=None),
                       "takeover_s_max": max((f.facts["takeover_s"] for f in sup_faults
                                              if "takeover_s" in f.facts), default=None)},
        "recovery_s_max": dict(sorted(recovery.items())),
        "worker_runs": [{"replica": r.replica, "name": r.name, "pid": r.pid,
                         "from_s": round(r.first_seen - soak.t0, 2),
                         "to_s": round(r.last_seen - soak.t0, 2)} for r in procs.worker_runs],
        "rss_mb_max": {role: {"mb": round(v / 2**20, 1), "where": where}
                       for role, (v, where) in sorted(procs.rss_max.items())},
        "rss_mb_growth_max": {role: round(v / 2**20, 1)
                              for role, v in sorted(procs.rss_growth.items())},
        "watchers": {"cluster_samples": soak.cluster.samples,
                     "health_samples": soak.health.samples,
                     "errors": [repr(e) for e in (soak.cluster.error, soak.health.error) if e]
                     + ([procs.error] if procs.error else [])},
    }


def render(f: dict[str, Any]) -> str:
    table = Table(title=f"chaos soak — {f['replay']}", show_lines=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    occ, dup, ov = f["occurrences"], f["duplicates"], f["overlap"]
    rows: list[tuple[str, Any]] = [
        ("settings", ", ".join(f"{k}={v}" for k, v in f["settings"].items())),
        ("time (soak / drain / wall)", f"{f['time']['soak_s']} s / {f['time']['drain_s']} s"
                                       f" / {f['time']['wall_s']} s"),
        ("faults", f"{f['faults']['total']}: " + ", ".join(
            f"{k} {v}" for k, v in f["faults"]["by_kind"].items())),
        ("occurrences written (new+repeats)", f"{occ['written']} ({occ['new']}+{occ['repeats']})"),
        ("LOST", occ["lost"]),
        ("phantom markers", occ["phantoms"]),
        ("DUPLICATES (copies / occurrences)", f"{dup['total']} / {dup['distinct']}"),
    ]
    for cause, c in sorted(dup["by_cause"].items()):
        rows.append((f"  dups from {cause}",
                     f"{c['duplicates']} (bound {c['bound']}, {c['triggers']} trigger(s), max "
                     f"{c['max_per_trigger']}, over bound {c['over_bound']})"))
    rows += [
        ("token passed an unacked event", f["commit_violation_count"]),
        ("ConfigMap token regressions", len(f["token"]["configmap_regressions"])),
        ("in-memory token regressions", len(f["token"]["in_memory_regressions"])),
        ("OVERLAP instants (samples)", f"{ov['instants']} ({ov['samples']} samples, gap ms "
                                       f"p50 {ov['gap_ms_p50']} p99 {ov['gap_ms_p99']} "
                                       f"max {ov['gap_ms_max']}, {ov['gaps_over_20ms']} over "
                                       f"20 ms; sampler CPU {ov['sampler_cpu_s']} s)"),
        ("take-overs before the lease expired", len(f["early_takeovers"])),
        ("workers alive past their lease", len(f["lease"]["outlived"])),
        ("workers alive while another held the lock", len(f["lease"]["overlapped"])),
        ("orphans (continuous / final)", f"{len(f['orphans']['continuous'])} / "
                                         f"{len(f['orphans']['after_final_stop'])}"),
        ("exit codes (final SIGTERM)", f["exit_codes"]["final_sigterm"]),
        ("leadership", ", ".join(f"{k} {v}" for k, v in f["leadership"].items())),
        ("recovery s max", ", ".join(f"{k} {v}" for k, v in f["recovery_s_max"].items())),
        ("RSS MB max", ", ".join(f"{k} {v['mb']}" for k, v in f["rss_mb_max"].items())),
        ("RSS MB growth after 10 s",
         ", ".join(f"{k} {v}" for k, v in f["rss_mb_growth_max"].items())),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    faults = Table(title="faults", show_lines=False)
    for col in ("n", "kind", "at_s", "recovery_s", "detail", "facts"):
        faults.add_column(col)
    for row in f["fault_log"]:
        facts = {k: v for k, v in row.items()
                 if k not in ("n", "kind", "at_s", "recovery_s", "detail", "victim_was_leader")}
        faults.add_row(str(row["n"]), row["kind"], str(row["at_s"]), str(row["recovery_s"]),
                       row["detail"], ", ".join(f"{k}={v}" for k, v in facts.items()))
    out = io.StringIO()
    console = Console(file=out, width=140, color_system=None)
    console.print(table)
    console.print(faults)
    return out.getvalue()
