"""The events worker's job against a real kubesim and a real local intake, in a thread.

Every occurrence carries a unique marker (see event_rig), so each test counts what was lost
and what was repeated from what the intake acknowledged.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from event_rig import (
    JobRunner,
    check_once,
    event,
    kube_api,
    occurrences,
    repeat,
)
from intake_server import LocalIntake
from polling import wait_for

from workers.protocol import Token
from workers.settings import EventSettings, EventTypeSelector

QUICK = EventSettings(flush_interval_s=0.1, watch_timeout_s=30, batch_max_events=100)


@pytest.fixture
def intake():
    with LocalIntake() as server:
        yield server


def started(job: JobRunner) -> Token:
    """The token the job reports once it is watching (list position or bookmark)."""
    return wait_for(lambda: job.token, what="the job's first token")


def delivered(intake: LocalIntake, expected: set[tuple[int, int]], timeout: float = 20.0):
    """Wait until every expected occurrence was acknowledged; return all found."""
    wait_for(lambda: expected <= set(occurrences(intake)), timeout,
             what=f"{len(expected)} occurrences at the intake")
    return occurrences(intake)


def ids(start: int, stop: int, count: int = 1) -> set[tuple[int, int]]:
    return {(i, count) for i in range(start, stop)}


def rv_of(obj) -> int:
    return int(obj["metadata"]["resourceVersion"])


def test_steady_stream_every_event_once_and_tokens_advance(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    first = started(job)
    for wave in range(6):
        kubesim.create_many("events", [event(i) for i in range(wave * 250, wave * 250 + 250)],
                            "default")
    last = kubesim.create("events", event(9999), "default")
    found = delivered(intake, ids(0, 1500) | {(9999, 1)})
    assert check_once(found, ids(0, 1500)) == (set(), {})
    assert set(found) == ids(0, 1500) | {(9999, 1)}
    wait_for(lambda: int(job.token.resource_version) >= rv_of(last), what="token at the end")
    assert job.stop() < 2.0
    rvs = [int(t.resource_version) for t in job.tokens]
    assert rvs == sorted(rvs)
    assert int(first.resource_version) < rvs[-1]
    assert job.tokens[-1].timestamp is not None
    stats = job.stats()
    assert stats["events_delivered_total"] == 1501
    assert stats["intake_payloads_acknowledged_total"] >= 15  # batches of <= 100 events
    request = intake.requests("/intake/")[0]
    assert request.headers["dd-api-key"] == job.settings.intake.api_key
    assert request.headers["content-encoding"] == "deflate"
    assert request.body["events"]["kubernetes"][0]["msg_title"].startswith("Events from the Pod")


@pytest.mark.parametrize("token", [None, Token("0"), Token("")], ids=["none", "zero", "empty"])
def test_start_without_token_skips_the_backlog(kubesim, intake, token):
    kubesim.create_many("events", [event(i) for i in range(50)], "default")
    job = JobRunner(kubesim, intake, settings=QUICK, token=token).start()
    started(job)
    kubesim.create_many("events", [event(i) for i in range(100, 120)], "default")
    found = delivered(intake, ids(100, 120))
    job.stop()
    assert set(found) == ids(100, 120)  # the backlog came first in the stream, or never


def test_max_age_replays_recent_events_only(kubesim, intake):
    now = time.time()
    kubesim.create_many("events", [event(i, seen=now - 7200) for i in range(10)], "default")
    kubesim.create_many("events", [event(i, seen=now - 60) for i in range(10, 20)], "default")
    settings = EventSettings(flush_interval_s=0.1, max_age_s=600, batch_max_events=7)
    job = JobRunner(kubesim, intake, settings=settings).start()
    found = delivered(intake, ids(10, 20))
    kubesim.create_many("events", [event(i) for i in range(20, 25)], "default")
    found = delivered(intake, ids(10, 25))
    job.stop()
    assert set(found) == ids(10, 25)
    assert check_once(found, ids(10, 25)) == (set(), {})
    assert job.stats()["events_stale_total"] == 10


def test_resume_from_a_token_delivers_exactly_what_came_after(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    kubesim.create_many("events", [event(i) for i in range(100)], "default")
    delivered(intake, ids(0, 100))
    last = kubesim.get("events", event(99)["metadata"]["name"], "default")
    wait_for(lambda: int(job.token.resource_version) >= rv_of(last), what="token at event 99")
    job.stop()
    token = job.token
    kubesim.create_many("events", [event(i) for i in range(100, 150)], "default")  # meanwhile
    intake.reset()
    job2 = JobRunner(kubesim, intake, settings=QUICK, token=token).start()
    kubesim.create_many("events", [event(i) for i in range(150, 160)], "default")
    found = delivered(intake, ids(100, 160))
    job2.stop()
    assert set(found) == ids(100, 160)
    assert check_once(found, ids(100, 160)) == (set(), {})


def test_repeats_are_new_occurrences_deletes_and_same_count_writes_are_not(kubesim, intake):
    api = kube_api(kubesim)
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    names = [kubesim.create("events", event(i), "default")["metadata"]["name"]
             for i in range(10)]
    delivered(intake, ids(0, 10))
    for count in (2, 3):
        for name in names:
            repeat(api, "default", name, count)
    found = delivered(intake, ids(0, 10) | ids(0, 10, 2) | ids(0, 10, 3))
    # A write that does not raise the count (a label, say) and deletions are no occurrence.
    path = f"/api/v1/namespaces/default/events/{names[0]}"
    obj = api.get(path)
    obj["metadata"]["labels"] = {"touched": "yes"}
    api.replace(path, obj)
    for name in names[5:]:
        api.request("DELETE", f"/api/v1/namespaces/default/events/{name}")
    marker = kubesim.create("events", event(50), "default")
    found = delivered(intake, {(50, 1)})
    wait_for(lambda: int(job.token.resource_version) >= rv_of(marker), what="token")
    job.stop()
    expected = ids(0, 10) | ids(0, 10, 2) | ids(0, 10, 3) | {(50, 1)}
    assert set(found) == expected
    assert check_once(found, expected) == (set(), {})
    stats = job.stats()
    assert stats["events_duplicates_total"] == 1  # the label write
    assert stats["events_deleted_ignored_total"] == 5


def test_bookmarks_advance_the_token_on_a_quiet_cluster(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    kubesim.create("events", event(1), "default")
    delivered(intake, {(1, 1)})
    # Other objects move the cluster's resourceVersion; only bookmarks tell the watcher.
    cm = None
    for i in range(3):
        cm = kubesim.create("configmaps", {"metadata": {"name": f"cm-{i}"}}, "default")
    wait_for(lambda: int(job.token.resource_version) >= rv_of(cm), what="token at a bookmark")
    job.stop()
    assert job.stats()["bookmarks_total"] >= 1
    assert len(intake.events()) == 1


def test_410_after_compaction_relists_without_loss_or_repeat(make_kubesim, intake):
    sim = make_kubesim(history=200)
    job = JobRunner(sim, intake, settings=QUICK).start()
    started(job)
    sim.create_many("events", [event(i) for i in range(100)], "default")
    delivered(intake, ids(0, 100))
    sim.stop_listening()  # the watch is cut; what follows happens while it is away
    sim.create_many("events", [event(i) for i in range(100, 1300)], "default")
    sim.compact()
    sim.resume_listening()
    found = delivered(intake, ids(0, 1300), timeout=30)
    sim.create_many("events", [event(i) for i in range(1300, 1310)], "default")
    found = delivered(intake, ids(0, 1310))
    job.stop()
    assert check_once(found, ids(0, 1310)) == (set(), {})
    assert set(found) == ids(0, 1310)
    stats = job.stats()
    assert stats["relists_total"] >= 1
    assert stats["watch_expired_total"] >= 1


def test_http_410_on_the_watch_request_relists(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    kubesim.create_many("events", [event(i) for i in range(50)], "default")
    delivered(intake, ids(0, 50))
    kubesim.stop_listening()
    kubesim.create_many("events", [event(i) for i in range(50, 120)], "default")
    kubesim.inject_fault(status=410, path="/events", verbs=["watch"], times=1)
    kubesim.resume_listening()
    found = delivered(intake, ids(0, 120))
    job.stop()
    assert check_once(found, ids(0, 120)) == (set(), {})
    assert job.stats()["relists_total"] == 1


def list_requests(sim) -> int:
    return sum(c["requests"].get("list events", 0) for c in sim.counts()["clients"])


def test_expired_continue_token_restarts_the_list(make_kubesim, intake):
    sim = make_kubesim(history=100)
    job = JobRunner(sim, intake, settings=QUICK).start()
    started(job)
    sim.stop_listening()
    sim.create_many("events", [event(i) for i in range(1200)], "default")  # 3 list pages
    sim.compact()
    sim.reset_counts()
    sim.inject_fault(latency=0.3, path="/events", verbs=["list"])
    sim.resume_listening()
    wait_for(lambda: list_requests(sim) >= 2, what="the second page requested")
    sim.create("configmaps", {"metadata": {"name": "moves-the-rv"}}, "default")
    sim.compact()  # the snapshot behind the continue token is gone: 410 on page 2
    found = delivered(intake, ids(0, 1200), timeout=30)
    job.stop()
    assert check_once(found, ids(0, 1200)) == (set(), {})
    stats = job.stats()
    assert stats["list_restarts_total"] == 1
    assert stats["events_duplicates_total"] >= 500  # page 1 came twice; memory dropped it


def test_resume_from_a_compacted_token_keeps_only_newer_events(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    kubesim.create_many("events", [event(i) for i in range(30)], "default")
    last = kubesim.get("events", event(29)["metadata"]["name"], "default")
    delivered(intake, ids(0, 30))
    wait_for(lambda: int(job.token.resource_version) >= rv_of(last), what="token")
    job.stop()
    kubesim.create_many("events", [event(i) for i in range(30, 45)], "default")
    kubesim.compact()
    intake.reset()
    job2 = JobRunner(kubesim, intake, settings=QUICK, token=job.token).start()
    found = delivered(intake, ids(30, 45))
    kubesim.create_many("events", [event(i) for i in range(45, 50)], "default")
    found = delivered(intake, ids(30, 50))
    job2.stop()
    assert set(found) == ids(30, 50)  # a fresh process: no memory, resourceVersions decide
    assert check_once(found, ids(30, 50)) == (set(), {})


def test_dropped_watches_reconnect(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    kubesim.inject_fault(drop_watches=True, path="/events", duration=1.0)
    for wave in range(5):
        kubesim.create_many("events", [event(i) for i in range(wave * 40, wave * 40 + 40)],
                            "default")
        wait_for(lambda n=wave: ids(0, n * 40 + 40) <= set(occurrences(intake)),
                 what=f"wave {wave}")
    found = occurrences(intake)
    job.stop()
    assert check_once(found, ids(0, 200)) == (set(), {})
    assert job.stats()["watch_errors_total"] >= 1


def test_api_errors_back_off_and_mark_unhealthy_until_answered(kubesim, intake):
    kubesim.inject_fault(status=500, path="/events", verbs=["list", "watch"], times=4)
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    wait_for(lambda: not job.heartbeat().healthy, what="unhealthy")
    assert "500" in job.heartbeat().detail
    started(job)
    kubesim.create_many("events", [event(i) for i in range(20)], "default")
    found = delivered(intake, ids(0, 20))
    wait_for(lambda: job.heartbeat().healthy, what="healthy again")
    job.stop()
    assert check_once(found, ids(0, 20)) == (set(), {})
    assert job.stats()["watch_errors_total"] >= 4


def test_intake_outage_holds_the_token_then_delivers_everything_once(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    kubesim.create_many("events", [event(i) for i in range(10)], "default")
    delivered(intake, ids(0, 10))
    before = wait_for(lambda: job.token.timestamp and job.token, what="token after 10")
    intake.respond(503, 503, 503)
    kubesim.create_many("events", [event(i) for i in range(10, 400)], "default")
    wait_for(lambda: sum(r.status == 503 for r in intake.requests()) == 3, what="503s")
    intake.down()
    wait_for(lambda: job.stats().get("intake_connection_errors_total", 0) >= 2,
             what="connection refused")
    assert job.token == before  # nothing acknowledged, nothing reported
    kubesim.create_many("events", [event(i) for i in range(400, 500)], "default")
    intake.up()
    found = delivered(intake, ids(0, 500))
    job.stop()
    assert check_once(found, ids(0, 500)) == (set(), {})
    assert int(job.token.resource_version) > int(before.resource_version)


def test_intake_403_marks_unhealthy_and_keeps_the_token(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    first = started(job)
    intake.handler = lambda request: 403
    kubesim.create_many("events", [event(i) for i in range(5)], "default")
    wait_for(lambda: not job.heartbeat().healthy, what="unhealthy")
    beat = job.heartbeat()
    assert "403" in beat.detail
    assert job.settings.intake.api_key not in beat.detail
    wait_for(lambda: len(intake.requests()) >= 2, what="a retry after the pause")
    assert job.token == first
    intake.handler = None  # the key was fixed
    found = delivered(intake, ids(0, 5))
    wait_for(lambda: job.heartbeat().healthy, what="healthy again")
    job.stop()
    assert check_once(found, ids(0, 5)) == (set(), {})
    assert job.token != first


def test_intake_400_skips_that_payload_and_moves_on(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    intake.respond(400)
    first = kubesim.create("events", event(0), "default")
    wait_for(lambda: any(r.status == 400 for r in intake.requests()), what="a 400")
    wait_for(lambda: int(job.token.resource_version) >= rv_of(first), what="token past it")
    kubesim.create("events", event(1), "default")
    found = delivered(intake, {(1, 1)})
    job.stop()
    assert set(found) == {(1, 1)}
    assert job.stats()["datadog_events_skipped_total"] == 1


def test_filters_server_side_and_collected_types(kubesim, intake):
    settings = EventSettings(
        flush_interval_s=0.1, filtered_event_types=("reason!=Noisy",),
        collected_event_types=(EventTypeSelector(kind="Pod"),
                               EventTypeSelector(source="scheduler", reasons=("Scheduled",))),
    )
    job = JobRunner(kubesim, intake, settings=settings).start()
    started(job)
    kubesim.create_many("events", [event(i, reason="Noisy") for i in range(20)], "default")
    kubesim.create_many("events", [event(i, kind="Deployment") for i in range(20, 30)],
                        "default")
    kubesim.create_many("events", [event(i) for i in range(30, 40)], "default")
    kubesim.create("events", event(40, kind="Node", ns="", component="scheduler",
                                   reason="Scheduled"), "default")
    found = delivered(intake, ids(30, 41))
    job.stop()
    assert set(found) == ids(30, 41)
    stats = job.stats()
    # The Noisy ones never left the server; the Deployment ones were filtered here.
    assert stats["events_received_total"] == 21
    assert stats["events_filtered_total"] == 10


def test_malformed_events_are_skipped(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    bad_kind = event(1)
    bad_kind["involvedObject"].pop("kind")
    bad_count = event(2)
    bad_count["count"] = "three"
    no_name = event(3)
    no_name["involvedObject"]["name"] = ""
    kubesim.create_many("events", [event(0), bad_kind, bad_count, no_name, event(4)],
                        "default")
    found = delivered(intake, {(0, 1), (4, 1)})
    wait_for(lambda: job.stats().get("events_malformed_total") == 3, what="3 malformed")
    job.stop()
    assert set(found) == {(0, 1), (4, 1)}


def test_stop_is_prompt_on_a_quiet_watch(make_kubesim, intake):
    sim = make_kubesim(bookmark_interval=3600)
    job = JobRunner(sim, intake, settings=EventSettings(inactivity_timeout_s=300)).start()
    started(job)
    sim.create("events", event(1), "default")
    delivered(intake, {(1, 1)})
    assert job.stop() < 2.0


def test_stop_is_prompt_while_the_intake_is_down(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    intake.down()
    kubesim.create_many("events", [event(i) for i in range(5)], "default")
    wait_for(lambda: job.stats().get("intake_connection_errors_total", 0) >= 1,
             what="connection refused")
    assert job.stop() < 2.0


def test_token_timestamp_is_the_newest_event_time(kubesim, intake):
    job = JobRunner(kubesim, intake, settings=QUICK).start()
    started(job)
    seen = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    kubesim.create("events", event(1, seen=seen), "default")
    kubesim.create("events", event(2, seen=seen - 3600), "default")
    delivered(intake, {(1, 1), (2, 1)})
    wait_for(lambda: job.token.timestamp and job.token.timestamp.timestamp() == seen,
             what="token timestamp")
    job.stop()
