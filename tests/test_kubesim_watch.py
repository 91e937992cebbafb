"""kubesim watch semantics, and the official client's watch quirks pinned against them."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from kubernetes import client, watch
from kubesim_http import call

CM = "/api/v1/namespaces/default/configmaps"


def _core(sim) -> client.CoreV1Api:
    return client.CoreV1Api(sim.api_client())


def _stream(sim, **kwargs):
    """A raw watch of default's ConfigMaps: the fast path (no model deserialisation)."""
    kwargs.setdefault("timeout_seconds", 10)
    return _core(sim).list_namespaced_config_map(
        "default", watch=True, _preload_content=False, _request_timeout=15, **kwargs)


def _events(resp, count: int | None = None) -> list[dict]:
    """Decode lines with orjson until ``count`` events (or the end of the stream)."""
    out = []
    buffer = b""
    for chunk in resp.stream(4096, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                out.append(orjson.loads(line))
                if count is not None and len(out) >= count:
                    resp.close()
                    return out
    return out


def _create(sim, name: str, labels: dict | None = None) -> dict:
    return call(sim, "POST", CM, {"metadata": {"name": name, "labels": labels or {}}}).json


def test_watch_from_resource_version_sends_only_newer_changes(kubesim):
    first = _create(kubesim, "old")
    resp = _stream(kubesim, resource_version=first["metadata"]["resourceVersion"])
    made = _create(kubesim, "new")
    call(kubesim, "DELETE", f"{CM}/old")
    events = _events(resp, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "new"), ("DELETED", "old")]
    assert events[0]["object"] == made
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs[0] < rvs[1]
    assert events[1]["object"]["metadata"]["resourceVersion"] == str(kubesim.store.rv)


@pytest.mark.parametrize("rv", ["0", None])
def test_watch_from_zero_or_unset_starts_with_synthetic_added(kubesim, rv):
    _create(kubesim, "a")
    _create(kubesim, "b")
    kwargs = {"resource_version": rv} if rv is not None else {}
    resp = _stream(kubesim, **kwargs)
    _create(kubesim, "c")
    events = _events(resp, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c")]


def test_bookmarks_carry_the_current_resource_version(kubesim):
    _create(kubesim, "a")
    call(kubesim, "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}})
    resp = _stream(kubesim, resource_version=str(kubesim.store.rv), allow_watch_bookmarks=True)
    events = _events(resp, 1)
    assert events == [{"type": "BOOKMARK", "object": {
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"resourceVersion": str(kubesim.store.rv), "creationTimestamp": None}}}]


def test_send_initial_events_ends_with_an_annotated_bookmark(kubesim):
    _create(kubesim, "a")
    resp = _stream(kubesim, send_initial_events=True, allow_watch_bookmarks=True,
                   resource_version_match="NotOlderThan")
    events = _events(resp, 2)
    assert events[0]["type"] == "ADDED"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {
        "k8s.io/initial-events-end": "true"}


def test_timeout_seconds_ends_the_stream(kubesim):
    started = time.monotonic()
    resp = _stream(kubesim, resource_version=str(kubesim.store.rv), timeout_seconds=1)
    assert _events(resp) == []
    assert 0.9 <= time.monotonic() - started < 5


def test_selectors_turn_changes_into_added_and_deleted(kubesim):
    obj = _create(kubesim, "x", {"app": "no"})
    resp = _stream(kubesim, resource_version=obj["metadata"]["resourceVersion"],
                   label_selector="app=yes")
    obj["metadata"]["labels"] = {"app": "yes"}
    obj = call(kubesim, "PUT", f"{CM}/x", obj).json
    obj["data"] = {"k": "v"}
    obj = call(kubesim, "PUT", f"{CM}/x", obj).json
    obj["metadata"]["labels"] = {"app": "no"}
    left = call(kubesim, "PUT", f"{CM}/x", obj).json
    _create(kubesim, "unrelated", {"app": "no"})
    events = _events(resp, 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    # Leaving the selection: the previous content, at the new resourceVersion.
    assert events[2]["object"]["metadata"]["labels"] == {"app": "yes"}
    assert events[2]["object"]["metadata"]["resourceVersion"] == left["metadata"][
        "resourceVersion"]


def test_field_selector_on_one_name(kubesim):
    resp = _stream(kubesim, resource_version=str(kubesim.store.rv),
                   field_selector="metadata.name=want")
    _create(kubesim, "other")
    _create(kubesim, "want")
    assert [e["object"]["metadata"]["name"] for e in _events(resp, 1)] == ["want"]


EXPIRED = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                       "status": "Failure", "reason": "Expired", "code": 410}}


def test_compacted_resource_version_yields_error_event_with_expired_status(kubesim):
    old = _create(kubesim, "a")["metadata"]["resourceVersion"]
    _create(kubesim, "b")
    compacted = kubesim.compact()
    resp = _stream(kubesim, resource_version=old)
    assert resp.status == 200
    events = _events(resp)
    assert len(events) == 1
    assert events[0]["object"].pop("message") == f"too old resource version: {old} ({compacted})"
    assert events[0] == EXPIRED


def test_history_window_bounds_watches(make_kubesim):
    sim = make_kubesim(history=5)
    rvs = [int(_create(sim, f"c{i}")["metadata"]["resourceVersion"]) for i in range(10)]
    oldest_kept = rvs[-5]
    ok = _stream(sim, resource_version=str(oldest_kept - 1))
    assert len(_events(ok, 5)) == 5
    resp = _stream(sim, resource_version=str(rvs[2]))
    event = _events(resp)[0]
    assert event["type"] == "ERROR"
    assert event["object"]["message"] == f"too old resource version: {rvs[2]} ({oldest_kept - 1})"


def test_events_k8s_io_watch_converts_on_the_fly(kubesim):
    resp = client.EventsV1Api(kubesim.api_client()).list_namespaced_event(
        "default", watch=True, _preload_content=False, timeout_seconds=10,
        resource_version=str(kubesim.store.rv))
    call(kubesim, "POST", "/api/v1/namespaces/default/events", {
        "metadata": {"name": "e"}, "message": "hello", "reason": "R",
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"}})
    event = _events(resp, 1)[0]
    assert event["object"]["apiVersion"] == "events.k8s.io/v1"
    assert event["object"]["note"] == "hello"


def test_event_ttl_deletes_events_and_tells_watchers(make_kubesim):
    sim = make_kubesim(event_ttl=0.5)
    path = "/api/v1/namespaces/default/events"
    resp = client.CoreV1Api(sim.api_client()).list_namespaced_event(
        "default", watch=True, _preload_content=False, timeout_seconds=10,
        resource_version=str(sim.store.rv))
    call(sim, "POST", path, {"metadata": {"name": "short"}, "reason": "R",
                             "involvedObject": {"kind": "Pod", "name": "p",
                                                "namespace": "default"}})
    assert [e["type"] for e in _events(resp, 2)] == ["ADDED", "DELETED"]
    assert call(sim, "GET", f"{path}/short").status == 404


def test_many_watchers_get_the_same_bytes(kubesim):
    rv = str(kubesim.store.rv)
    streams = [_stream(kubesim, resource_version=rv) for _ in range(20)]
    _create(kubesim, "shared")
    results = [_events(s, 1)[0] for s in streams]
    assert all(r == results[0] for r in results)


# -- the official client's Watch quirks ---------------------------------------------------


def test_quirk_watch_deserialize_false_raises_keyerror_on_error_events(kubesim):
    old = _create(kubesim, "a")["metadata"]["resourceVersion"]
    _create(kubesim, "b")
    kubesim.compact()
    w = watch.Watch()
    with pytest.raises(KeyError, match="raw_object"):
        for _ in w.stream(_core(kubesim).list_namespaced_config_map, "default",
                          resource_version=old, deserialize=False):
            pass


def _watch_requests(sim) -> int:
    return sum(n for c in sim.counts()["clients"] for k, n in c["requests"].items()
               if k == "watch configmaps")


def test_quirk_watch_retries_once_silently_on_410(kubesim):
    old = _create(kubesim, "a")["metadata"]["resourceVersion"]
    _create(kubesim, "b")
    kubesim.compact()
    kubesim.reset_counts()
    w = watch.Watch()
    with pytest.raises(client.ApiException) as info:
        for _ in w.stream(_core(kubesim).list_namespaced_config_map, "default",
                          resource_version=old):
            pass
    assert info.value.status == 410
    assert "Expired: too old resource version" in info.value.reason
    assert _watch_requests(kubesim) == 2  # one silent retry with the same resourceVersion


def test_quirk_watch_with_timeout_raises_410_without_retry(kubesim):
    old = _create(kubesim, "a")["metadata"]["resourceVersion"]
    _create(kubesim, "b")
    kubesim.compact()
    kubesim.reset_counts()
    with pytest.raises(client.ApiException) as info:
        for _ in watch.Watch().stream(_core(kubesim).list_namespaced_config_map, "default",
                                      resource_version=old, timeout_seconds=5):
            pass
    assert info.value.status == 410
    assert _watch_requests(kubesim) == 1


def test_model_watch_delivers_typed_objects_and_tracks_resource_version(kubesim):
    w = watch.Watch()
    got: list[tuple[str, str]] = []

    def produce() -> None:
        time.sleep(0.2)
        _create(kubesim, "typed")

    thread = threading.Thread(target=produce)
    thread.start()
    for event in w.stream(_core(kubesim).list_namespaced_config_map, "default",
                          resource_version=str(kubesim.store.rv), timeout_seconds=10):
        got.append((event["type"], event["object"].metadata.name))
        w.stop()
    thread.join()
    assert got == [("ADDED", "typed")]
    assert w.resource_version == str(kubesim.store.rv)


def test_clients_that_hang_up_release_their_watch(kubesim):
    api_client = kubesim.api_client()
    api = client.CoreV1Api(api_client)
    rv = str(kubesim.store.rv)
    streams = [api.list_namespaced_config_map("default", watch=True, _preload_content=False,
                                              resource_version=rv, timeout_seconds=60)
               for _ in range(30)]
    deadline = time.monotonic() + 10
    while kubesim.info()["watches"] < 30:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for stream in streams:
        stream.close()  # closes the socket: the server must notice and drop the watch
    while kubesim.info()["watches"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
