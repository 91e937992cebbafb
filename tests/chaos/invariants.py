"""The soak's guarantees, checked on its figures (see soakreport): one line per breach.

Grouped by what they protect: delivery (nothing lost, duplicates within each cause's
bound, the token only ever at acknowledged events), leadership (no two replicas working at
once, no worker outliving its lease), processes (no orphans, clean exits, bounded memory)
and the evidence that each fault really did what it was meant to.
"""

from __future__ import annotations

from typing import Any

from soakreport import RSS_LIMITS_MB
from soakrig import SoakSettings

__all__ = ["broken"]

SAMPLE_GAP_MS = 20.0
"""Process sampling must run at least this often (median): "at no instant" means this."""


def broken(f: dict[str, Any], s: SoakSettings) -> list[str]:
    """Every broken guarantee, one line each (empty: all held)."""
    return [*_delivery(f, s), *_duplicates(f), *_leadership(f), *_processes(f),
            *_fault_evidence(f)]


def _delivery(f: dict[str, Any], s: SoakSettings) -> list[str]:
    problems = []
    occ = f["occurrences"]
    if occ["lost"]:
        problems.append(f"{occ['lost']} occurrence(s) lost, e.g. {occ['lost_sample']}")
    if occ["phantoms"]:
        problems.append(f"{occ['phantoms']} marker(s) delivered that were never written")
    if occ["written"] < s.rate * s.seconds * 0.5:
        problems.append(f"the stream wrote only {occ['written']} occurrences")
    if f["commit_violation_count"]:
        problems.append(f"the ConfigMap token passed {f['commit_violation_count']} "
                        f"unacknowledged occurrence(s): {f['commit_violations'][:3]}")
    if f["token"]["configmap_regressions"]:
        problems.append(f"ConfigMap token moved backwards: {f['token']['configmap_regressions']}")
    return problems


def _duplicates(f: dict[str, Any]) -> list[str]:
    problems = []
    for t in f["duplicates"]["triggers"]:
        if t["duplicates"] > t["bound"]:
            problems.append(f"{t['duplicates']} duplicates after {t['cause']} #{t['n']} at "
                            f"{t['at_s']} s exceed the bound {t['bound']} ({t['basis']})")
        if t["acked_before_exposure"]:
            problems.append(f"{t['cause']} #{t['n']} at {t['at_s']} s replayed "
                            f"{t['acked_before_exposure']} occurrence(s) acknowledged before "
                            f"the exposure window {t['exposure_s']} (oldest at "
                            f"{t['oldest_replayed_ack_s']} s): the checkpoint lagged")
        if t["late_by_old_run"]:
            problems.append(f"{t['cause']} #{t['n']} at {t['at_s']} s replayed "
                            f"{t['late_by_old_run']} occurrence(s) the old leader "
                            f"acknowledged after the exposure window {t['exposure_s']}: its "
                            "workers went on delivering after it stopped leading plus the "
                            "fencing grace")
        if t["late_by_new_run"]:
            problems.append(f"{t['cause']} #{t['n']} at {t['at_s']} s replayed "
                            f"{t['late_by_new_run']} occurrence(s) that a worker started after "
                            f"the leadership loss had already delivered (after "
                            f"{t['exposure_s'][1]} s): a re-elected leader resumed from the "
                            "ConfigMap's token, behind its own acknowledged progress")
    return problems


def _leadership(f: dict[str, Any]) -> list[str]:
    problems = []
    ov = f["overlap"]
    if ov["instants"]:
        problems.append(f"two replicas ran workers at once ({ov['instants']} samples), "
                        f"e.g. {ov['first']}")
    if ov["workers_unseen"]:
        problems.append(f"workers reported by /health that the process watch never saw "
                        f"(it is blind to them): {ov['workers_unseen']}")
    if ov["gap_ms_p50"] is None or ov["gap_ms_p50"] > SAMPLE_GAP_MS:
        problems.append(f"process sampling too slow: median gap {ov['gap_ms_p50']} ms")
    if f["early_takeovers"]:
        problems.append(f"the lock was taken over before the lease expired: "
                        f"{f['early_takeovers'][:3]}")
    if f["lease"]["outlived"]:
        problems.append(f"workers outlived their leader's lease: {f['lease']['outlived'][:3]}")
    if f["lease"]["overlapped"]:
        problems.append(f"workers ran while another replica held the lock: "
                        f"{f['lease']['overlapped'][:3]}")
    return problems


def _processes(f: dict[str, Any]) -> list[str]:
    problems = []
    orphans = f["orphans"]
    if orphans["continuous"]:
        problems.append(f"orphan processes: {orphans['continuous']}")
    for fault, left in orphans["after_supervisor_faults"].items():
        if left:
            problems.append(f"{fault}: processes {left} outlived their supervisor by 5 s")
    if orphans["after_final_stop"]:
        problems.append(f"processes left after the final stop: {orphans['after_final_stop']}")
    codes = f["exit_codes"]
    if any(code != 0 for code in codes["final_sigterm"].values()):
        problems.append(f"final SIGTERM exit codes {codes['final_sigterm']} (want 0)")
    for fault, code in codes["supervisor_faults"].items():
        if "term" in fault and code != 0:
            problems.append(f"{fault}: exit code {code} after SIGTERM (want 0)")
    for role, rss in f["rss_mb_max"].items():
        if rss["mb"] > RSS_LIMITS_MB.get(role, 200):
            problems.append(f"{role} RSS {rss['mb']} MB over {RSS_LIMITS_MB.get(role)} MB "
                            f"({rss['where']})")
    if f["watchers"]["errors"]:
        problems.append(f"a watcher failed: {f['watchers']['errors']}")
    return problems


def _fault_evidence(f: dict[str, Any]) -> list[str]:
    """Each fault must have done what it is for, or the soak tests less than it claims."""
    problems = []
    for row in f["fault_log"]:
        what = f"#{row['n']} {row['kind']}"
        if row["kind"] in ("api_pause", "partition") and row.get("fenced_s") is None:
            problems.append(f"{what}: the leader kept its workers ({row})")
        if row["kind"] == "compaction" and not row.get("relists"):
            problems.append(f"{what}: the events worker never re-listed")
        if row["kind"] == "watch_drop" and not row.get("watch_errors"):
            problems.append(f"{what}: the events worker's watch was not cut")
        if row["kind"] == "sighup_broken" and not row.get("workers_kept"):
            problems.append(f"{what}: the workers were restarted ({row})")
    return problems
