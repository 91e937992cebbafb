"""The token checkpoint against kubesim: ConfigMap datadogtoken, CAS, never backwards."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes import client

from kubesim.runner import KubeSim
from supervisor.checkpoint import TIMESTAMP_KEY, TOKEN_KEY, Checkpointer, parse_token
from workers.kubeapi import KubeApi
from workers.protocol import Token
from workers.settings import KubeSettings

T1 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def make(sim: KubeSim, *, leading: list[bool] | None = None) -> Checkpointer:
    api = KubeApi.from_settings(KubeSettings(kubeconfig_path=sim.kubeconfig), user_agent="ckpt")
    flag = leading if leading is not None else [True]
    return Checkpointer(api, namespace="default", may_write=lambda: flag[0])


def seed(sim: KubeSim, data: dict[str, str]) -> None:
    sim.create("configmaps", {"metadata": {"name": "datadogtoken"}, "data": data}, "default")


def stored(sim: KubeSim) -> dict[str, str]:
    obj = sim.get("configmaps", "datadogtoken", "default")
    assert obj is not None
    return obj.get("data") or {}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, None),
        ({TOKEN_KEY: "0"}, None),
        ({TOKEN_KEY: ""}, None),
        ({TOKEN_KEY: "12x"}, None),
        ({TOKEN_KEY: "1234"}, Token("1234")),
        ({TOKEN_KEY: "1234", TIMESTAMP_KEY: "2026-11-25T10:00:00Z"}, Token("1234", T1)),
        ({TOKEN_KEY: "1234", TIMESTAMP_KEY: "yesterday"}, Token("1234")),
    ],
)
def test_parse_token(data: dict[str, str], expected: Token | None) -> None:
    assert parse_token(data) == expected


def test_load_missing_configmap_is_no_token_and_first_flush_creates_it(kubesim: KubeSim) -> None:
    ckpt = make(kubesim)
    assert ckpt.load() is None
    assert ckpt.advance(Token("42", T1))
    assert ckpt.flush()
    assert stored(kubesim) == {TOKEN_KEY: "42", TIMESTAMP_KEY: "2026-11-25T10:00:00Z"}


def test_seeded_zero_token_is_overwritten_and_other_keys_kept(kubesim: KubeSim) -> None:
    seed(kubesim, {TOKEN_KEY: "0", "unrelated": "kept"})
    ckpt = make(kubesim)
    assert ckpt.load() is None
    ckpt.advance(Token("7"))
    assert ckpt.flush()
    assert stored(kubesim) == {TOKEN_KEY: "7", "unrelated": "kept"}


def test_token_never_moves_backwards_in_memory(kubesim: KubeSim) -> None:
    ckpt = make(kubesim)
    assert ckpt.advance(Token("100"))
    assert not ckpt.advance(Token("99"))
    assert not ckpt.advance(Token("100"))
    assert not ckpt.advance(Token("abc"))
    assert ckpt.token == Token("100")


def test_flush_only_while_leading(kubesim: KubeSim) -> None:
    leading = [False]
    ckpt = make(kubesim, leading=leading)
    ckpt.load()
    ckpt.advance(Token("5"))
    assert not ckpt.flush()
    assert kubesim.get("configmaps", "datadogtoken", "default") is None
    leading[0] = True
    assert ckpt.flush()
    assert stored(kubesim)[TOKEN_KEY] == "5"


def test_flush_survives_a_concurrent_writer_with_cas(kubesim: KubeSim) -> None:
    seed(kubesim, {TOKEN_KEY: "1"})
    ckpt = make(kubesim)
    ckpt.load()
    ckpt.advance(Token("2"))
    assert ckpt.flush()
    # Someone edits the ConfigMap (another key): our cached copy is stale -> 409 -> re-read.
    core = client.CoreV1Api(kubesim.api_client())
    core.patch_namespaced_config_map("datadogtoken", "default", {"data": {"note": "hi"}})
    ckpt.advance(Token("3"))
    assert ckpt.flush()
    assert stored(kubesim) == {TOKEN_KEY: "3", "note": "hi"}
    assert ckpt.conflicts >= 1


def test_never_overwrites_a_newer_stored_token(kubesim: KubeSim) -> None:
    seed(kubesim, {TOKEN_KEY: "10"})
    ckpt = make(kubesim)
    ckpt.load()
    # Another leader advanced the ConfigMap behind our back.
    core = client.CoreV1Api(kubesim.api_client())
    core.patch_namespaced_config_map("datadogtoken", "default", {"data": {TOKEN_KEY: "50"}})
    ckpt.advance(Token("20"))
    assert not ckpt.flush()
    assert stored(kubesim)[TOKEN_KEY] == "50"


def test_flush_failure_is_reported_not_raised(kubesim: KubeSim) -> None:
    seed(kubesim, {TOKEN_KEY: "1"})
    ckpt = make(kubesim)
    ckpt.load()
    ckpt.advance(Token("2"))
    kubesim.inject_fault(status=500, path="configmaps", verbs=["update"], times=1)
    assert not ckpt.flush()
    assert ckpt.failures == 1
    assert ckpt.flush()
    assert stored(kubesim)[TOKEN_KEY] == "2"
