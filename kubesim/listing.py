"""list: selectors, limit/continue pagination, resourceVersion semantics.

Continue tokens are the real server's shape (base64 of ``{"v","rv","start"}``) and read a
consistent snapshot at the first page's resourceVersion, rebuilt from the change history;
once that history is gone the token is expired (410) like an etcd-compacted one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kubesim import errors
from kubesim.resources import Resource
from kubesim.selectors import parse_field_selector, parse_label_selector
from kubesim.store import Store, Stored, TooOld

__all__ = ["ListResult", "Query", "list_objects", "make_matcher", "parse_rv", "wait_for_rv"]

_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def _param(query: Mapping[str, str], name: str) -> str:
    return query.get(name, "")


@dataclass(frozen=True, slots=True)
class Query:
    """The selection part of list and watch requests."""

    prefix: str
    name: str
    matcher: Callable[[Stored], bool] | None


def make_matcher(resource: Resource, query: Mapping[str, str]) -> Callable[[Stored], bool] | None:
    labels = parse_label_selector(_param(query, "labelSelector"))
    fields = parse_field_selector(_param(query, "fieldSelector"), resource)
    if labels is None and fields is None:
        return None
    bucket = resource.bucket

    def matches(stored: Stored) -> bool:
        if labels is not None and not labels.matches(stored.labels):
            return False
        return fields is None or fields.matches(stored.fields(bucket))

    return matches


def parse_rv(value: str, what: str = "resourceVersion") -> int:
    try:
        rv = int(value)
        if rv < 0:
            raise ValueError
    except ValueError:
        raise errors.bad_request(
            f'{what}: Invalid value: "{value}": strconv.ParseUint: parsing "{value}": '
            "invalid syntax"
        ) from None
    return rv


async def wait_for_rv(store: Store, rv: int, seconds: float = 3.0) -> None:
    """Wait for the store to reach ``rv`` (a client ahead of us); 504 like the watch cache."""
    deadline = time.monotonic() + seconds
    while store.rv < rv:
        if time.monotonic() >= deadline:
            raise errors.timeout(
                f"Too large resource version: {rv}, current: {store.rv}",
                {"causes": [{"reason": "ResourceVersionTooLarge",
                             "message": "Too large resource version"}],
                 "retryAfterSeconds": 1},
            )
        await asyncio.sleep(0.02)


def _encode_continue(rv: int, start: str) -> str:
    token = orjson.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start})
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("continue key is not valid: incorrect encoded start resourceVersion "
                             "(version meta.k8s.io/v1)")
        rv, start = int(data["rv"]), str(data["start"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from None
    return rv, start


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[Stored]
    metadata: dict[str, Any]


async def list_objects(
    store: Store, resource: Resource, namespace: str, query: Mapping[str, str]
) -> ListResult:
    matcher = make_matcher(resource, query)
    prefix = f"{namespace}/" if resource.namespaced and namespace else ""
    limit_text = _param(query, "limit")
    try:
        limit = int(limit_text) if limit_text else 0
    except ValueError:
        raise errors.bad_request(f'limit: Invalid value: "{limit_text}"') from None
    rv_text = _param(query, "resourceVersion")
    match = _param(query, "resourceVersionMatch")
    token = _param(query, "continue")
    start_after = ""
    exact = False
    if token:
        if rv_text and rv_text != "0":
            raise errors.bad_request("specifying resource version is not allowed when using "
                                     "continue")
        at_rv, start = _decode_continue(token)
        start_after = start.rstrip("\x00")
        exact = at_rv != -1
        if at_rv == -1:
            at_rv = store.rv
    elif rv_text in ("", "0"):
        if match:
            raise errors.bad_request('resourceVersionMatch: Forbidden: resourceVersionMatch is '
                                     'forbidden unless resourceVersion is provided')
        at_rv = store.rv
        if rv_text == "0":
            limit = 0  # served from the watch cache, which ignores limit (1.32)
    else:
        requested = parse_rv(rv_text)
        if match not in ("", "NotOlderThan", "Exact"):
            raise errors.bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        if requested > store.rv:
            await wait_for_rv(store, requested)
        exact = match == "Exact"
        at_rv = requested if exact else store.rv
    try:
        if exact and at_rv < store.rv:
            source = store.snapshot(resource.bucket, at_rv, prefix, start_after)
        else:
            source = store.items(resource.bucket, prefix, start_after)
        items: list[Stored] = []
        more = False
        for stored in source:
            if limit and len(items) >= limit:
                more = True
                break
            if matcher is None or matcher(stored):
                items.append(stored)
    except TooOld as exc:
        if token:
            raise errors.expired(
                _CONTINUE_EXPIRED, {"continue": _encode_continue(-1, start_after + "\x00")}
            ) from None
        raise errors.expired(str(exc)) from None
    metadata: dict[str, Any] = {"resourceVersion": str(at_rv)}
    if more and items:
        metadata["continue"] = _encode_continue(at_rv, items[-1].key + "\x00")
        if matcher is None and not (exact and at_rv < store.rv):
            metadata["remainingItemCount"] = store.count_after(
                resource.bucket, prefix, items[-1].key)
    return ListResult(items, metadata)
