"""``kube-event-agent run``: the supervisor process, PID 1 of every agent pod.

Threads and who owns what:
- main thread: signals (TERM/INT hand over, HUP reload, CHLD reap), starting workers after
  an election is won, the API readiness ping, shutdown;
- elector thread: campaigns and renews; on a failed renewal it stops the workers itself
  (fencing) before a follower can take over;
- checkpoint thread: persists the newest acknowledged token while leading;
- the worker pool's monitor thread, the log forwarder, the reaper and the health server.

Leadership is guarded by ``_leadership`` (a lock) and an epoch counter: workers are started
only by the main thread, only for the current epoch and only while the elector still says
we lead, so a late "start" can never follow a fencing "stop".
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from types import FrameType

from loguru import logger

from supervisor import logs, pid1
from supervisor.checkpoint import Checkpointer, format_timestamp
from supervisor.config import (
    AgentConfig,
    ConfigError,
    LoadedConfig,
    enabled_worker_kinds,
    load_config,
    loguru_level,
    worker_settings,
)
from supervisor.elector import ElectionTiming, Elector
from supervisor.health import HealthServer, start_health_server
from supervisor.lifecycle import WorkerPool
from supervisor.locks import make_lock
from supervisor.status import AgentStatus, LoopStatus
from workers.backoff import Backoff
from workers.kubeapi import ApiError, KubeApi, load_configuration

__all__ = ["Agent", "agent_version", "make_identity", "run"]

EXIT_OK = 0
EXIT_INVALID = 2
_TICK_S = 0.5


def agent_version() -> str:
    try:
        return version("kube-event-agent")
    except PackageNotFoundError:
        return "0.0.0"


def make_identity(pod_name: str) -> str:
    """``DD_POD_NAME`` (or hostname) plus a per-start suffix, so restarts are visible."""
    return f"{pod_name or socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class _ElectionKey:
    """What identifies the campaign: a change means release the old lock, campaign anew."""

    enabled: bool
    kind: str
    name: str
    namespace: str
    kubeconfig: str

    @classmethod
    def of(cls, config: AgentConfig) -> _ElectionKey:
        return cls(
            config.leader_election,
            config.leader_election_resource,
            config.leader_lease_name,
            config.kube_resources_namespace,
            config.kubernetes_kubeconfig_path,
        )


class Agent:
    """One supervisor. ``run()`` blocks until shutdown and returns the exit code."""

    def __init__(self, loaded: LoadedConfig, *, config_path: str | None) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.config_path = config_path
        self.identity = make_identity(self.config.pod_name)
        self.version = agent_version()
        self.user_agent = f"kube-event-agent/{self.version} (supervisor; {self.identity})"
        self._commands: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._leadership = threading.Lock()
        self._epoch = 0
        self._main_tick = time.monotonic()
        self._ckpt_tick = time.monotonic()
        self._last_reload: tuple[bool, str, float] | None = None
        self._shutting_down = False
        self._token_error = ""
        """Why the persisted token could not be read after winning ("" when it was)."""
        self.api: KubeApi
        self.elector: Elector | None = None
        self._elector_stop = threading.Event()
        self._elector_thread: threading.Thread | None = None
        self.pool: WorkerPool
        self.checkpointer: Checkpointer
        self.health: HealthServer | None = None
        self.reaper = pid1.OrphanReaper()

    # -- start-up ---------------------------------------------------------------------------
    def run(self) -> int:
        config = self.config
        logger.info(
            "kube-event-agent {} starting as {} (leader election {}, workers: {})",
            self.version, self.identity, "on" if config.leader_election else "off",
            ", ".join(enabled_worker_kinds(config)) or "none",
        )
        for warning in self.loaded.warnings:
            logger.warning("config: {}", warning)
        self.api = KubeApi(
            load_configuration(worker_settings(config).kube),
            timeout_s=float(config.kubernetes_apiserver_client_timeout),
            user_agent=self.user_agent,
        )
        self.pool = self._make_pool(config)
        self.checkpointer = Checkpointer(
            self.api,
            namespace=config.kube_resources_namespace,
            interval_s=float(config.token_checkpoint_interval),
            may_write=self._may_write,
        )
        self._install_signals()
        self.reaper.start()
        self.health = start_health_server(config.health_port, self.status)
        threading.Thread(target=self._checkpoint_loop, name="checkpoint", daemon=True).start()
        self._begin_campaign()
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return EXIT_OK

    def _make_pool(self, config: AgentConfig) -> WorkerPool:
        return WorkerPool(
            token_source=lambda _kind: self.checkpointer.token,
            on_progress=lambda _kind, token: self.checkpointer.advance(token),
            memory_limit_mb=float(config.worker_memory_limit_mb),
            backoff=Backoff(
                base_s=float(config.worker_restart_backoff_min),
                factor=2.0,
                cap_s=float(config.worker_restart_backoff_max),
                jitter=0.1,
            ),
            stable_after_s=float(config.worker_stable_after),
        )

    def _install_signals(self) -> None:
        def request(name: str) -> None:
            self._commands.put((name, 0))

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGHUP:
                request("reload")
            elif signum == signal.SIGCHLD:
                self.reaper.wake()
            else:
                request("shutdown")

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, on_signal)

    # -- leadership -------------------------------------------------------------------------
    def _begin_campaign(self) -> None:
        config = self.config
        if not config.leader_election:
            self.elector = None
            self._commands.put(("leading", self._epoch))
            return
        lock = make_lock(
            config.leader_election_resource, self.api,
            namespace=config.kube_resources_namespace, name=config.leader_lease_name,
            identity=self.identity,
        )
        self.elector = Elector(
            lock,
            ElectionTiming.from_lease(float(config.leader_lease_duration)),
            on_started_leading=self._on_started_leading,
            on_stopped_leading=self._on_stopped_leading,
        )
        self._elector_stop = threading.Event()
        self._elector_thread = threading.Thread(
            target=self.elector.run, args=(self._elector_stop,), name="elector", daemon=True
        )
        self._elector_thread.start()

    def _end_campaign(self, *, release: bool) -> None:
        """Stop campaigning: workers stopped, token persisted, lock released (if asked)."""
        elector, thread = self.elector, self._elector_thread
        with self._leadership:
            self._epoch += 1
        self.pool.stop(self._stop_grace())
        self.checkpointer.flush()
        self._elector_stop.set()
        if thread is not None:
            thread.join(max(1.0, float(self.config.kubernetes_apiserver_client_timeout) + 1))
        if elector is not None and release:
            elector.release()
        self.elector, self._elector_thread = None, None

    def _on_started_leading(self) -> None:
        # Elector thread: never block it on workers or on the token read; hand over.
        with self._leadership:
            self._epoch += 1
            self._commands.put(("leading", self._epoch))

    def _on_stopped_leading(self) -> None:
        # Elector thread, fencing: synchronous, so the workers are gone before we return.
        with self._leadership:
            self._epoch += 1
            elector = self.elector
            grace = elector.timing.fencing_grace_s if elector else self._stop_grace()
            self.pool.stop(grace)

    def _leading_now(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def _may_write(self) -> bool:
        # Only the leader writes the token; a fenced replica's late flush must not land.
        return self._leading_now()

    def _start_workers(self, epoch: int) -> None:
        """After winning: read the persisted token, then start the workers (main thread).

        A failed read is retried through the command queue, so signals are still served.
        """
        if self._shutting_down or epoch != self._epoch or not self._leading_now():
            return
        try:
            self.checkpointer.load()
        except ApiError as exc:
            # Starting without the token would skip or replay events: wait for it.
            if self._token_error != str(exc):
                logger.warning("cannot read the token yet ({}); retrying every second", exc)
            self._token_error = str(exc)
            retry = threading.Timer(1.0, self._commands.put, args=(("leading", epoch),))
            retry.daemon = True
            retry.start()
            return
        self._token_error = ""
        kinds = enabled_worker_kinds(self.config)
        with self._leadership:
            if epoch != self._epoch or not self._leading_now() or self._shutting_down:
                return
            if kinds:
                self.pool.start(worker_settings(self.config), kinds)

    # -- loops ------------------------------------------------------------------------------
    def _main_loop(self) -> None:
        while True:
            self._main_tick = time.monotonic()
            try:
                command, arg = self._commands.get(timeout=_TICK_S)
            except queue.Empty:
                self._ping_api()
                continue
            if command == "shutdown":
                logger.info("shutting down: handing over")
                return
            if command == "leading":
                self._start_workers(arg)
            elif command == "reload":
                self._reload()

    def _checkpoint_loop(self) -> None:
        while True:
            self._ckpt_tick = time.monotonic()
            time.sleep(self.checkpointer.interval_s)
            if not self._shutting_down and self._leading_now():
                self.checkpointer.flush()

    def _ping_api(self) -> None:
        """Keep /ready honest when nothing else talks to the API server (a quiet follower)."""
        age = self._api_contact_age()
        if age is not None and age < self._ready_after_s() / 3:
            return  # a watching follower hears from the API server with every renewal
        try:
            self.api.get("/version", timeout=min(5.0, self.api.timeout_s))
        except ApiError as exc:
            logger.debug("API server ping failed: {}", exc)

    def _api_contact_age(self) -> float | None:
        """Seconds since the API server last answered anyone in this supervisor."""
        now = time.monotonic()
        last_answer = self.api.last_answer
        ages = [now - last_answer] if last_answer is not None else []
        elector = self.elector
        if elector is not None and (age := elector.status().last_contact_age_s) is not None:
            ages.append(age)
        return min(ages) if ages else None

    # -- reload -----------------------------------------------------------------------------
    def _reload(self) -> None:
        try:
            loaded = load_config(self.config_path)
        except ConfigError as exc:
            logger.error("reload refused, keeping the running configuration: {}", exc)
            self._last_reload = (False, str(exc), time.monotonic())
            return
        old, new = self.config, loaded.config
        for warning in loaded.warnings:
            logger.warning("config: {}", warning)
        if new == old:
            logger.info("reload: configuration unchanged")
            self._last_reload = (True, "", time.monotonic())
            return
        if (old.log_level, old.log_format_json) != (new.log_level, new.log_format_json):
            logs.configure(level=loguru_level(new.log_level), json=new.log_format_json)
        if old.health_port != new.health_port:
            if self.health is not None:
                self.health.stop()
            self.health = start_health_server(new.health_port, self.status)
        self.checkpointer.interval_s = float(new.token_checkpoint_interval)
        self.pool.memory_limit_mb = float(new.worker_memory_limit_mb)
        recampaign = _ElectionKey.of(old) != _ElectionKey.of(new)
        self.loaded, self.config = loaded, new
        if recampaign:
            logger.info("reload: lock or cluster access changed: releasing and campaigning anew")
            self._end_campaign(release=old.leader_election_release_on_shutdown)
            self.api = KubeApi(
                load_configuration(worker_settings(new).kube),
                timeout_s=float(new.kubernetes_apiserver_client_timeout),
                user_agent=self.user_agent,
            )
            self.checkpointer.api = self.api
            self.checkpointer.namespace = new.kube_resources_namespace
            self._begin_campaign()
        else:
            if self.elector is not None and old.leader_lease_duration != new.leader_lease_duration:
                self.elector.timing = ElectionTiming.from_lease(float(new.leader_lease_duration))
            with self._leadership:
                if self._leading_now():
                    self.pool.apply(worker_settings(new), enabled_worker_kinds(new))
        logger.info("reload applied")
        self._last_reload = (True, "", time.monotonic())

    # -- shutdown ---------------------------------------------------------------------------
    def _stop_grace(self) -> float:
        return max(1.0, float(self.config.shutdown_timeout) / 2)

    def _shutdown(self) -> None:
        """Stop workers, persist the token, release the lock, within ``shutdown_timeout``."""
        self._shutting_down = True
        limit = float(self.config.shutdown_timeout)
        watchdog = threading.Timer(limit, _give_up, args=(limit,))
        watchdog.daemon = True
        watchdog.start()
        started = time.monotonic()
        was_leading = self._leading_now()
        self._end_campaign(release=self.config.leader_election_release_on_shutdown)
        self.pool.close()
        if self.health is not None:
            self.health.stop()
        self.reaper.stop()
        token = self.checkpointer.persisted
        logger.info(
            "stopped in {:.2f}s ({}; persisted token {})",
            time.monotonic() - started,
            "handed over" if was_leading else "was following",
            token.resource_version if token else "(none)",
        )
        watchdog.cancel()
        logs.flush()

    # -- status -----------------------------------------------------------------------------
    def _ready_after_s(self) -> float:
        return max(30.0, 2.0 * float(self.config.leader_lease_duration))

    def status(self) -> AgentStatus:
        now = time.monotonic()
        config = self.config
        elector = self.elector
        election = elector.status() if elector is not None else None
        token, persisted = self.checkpointer.token, self.checkpointer.persisted
        loops = [
            LoopStatus("main", now - self._main_tick,
                       2 * float(config.kubernetes_apiserver_client_timeout) + 10),
            LoopStatus("checkpoint", now - self._ckpt_tick,
                       float(config.token_checkpoint_interval)
                       + 4 * float(config.kubernetes_apiserver_client_timeout) + 10),
            # The first fork-server start happens on this loop: slow on a loaded node.
            LoopStatus("worker-monitor", self.pool.tick_age_s, 30.0),
        ]
        if elector is not None:
            loops.append(LoopStatus(
                "elector", now - elector.ticked_at,
                1.5 * float(config.leader_lease_duration)
                + 3 * float(config.kubernetes_apiserver_client_timeout) + 10,
            ))
        reload_ok, reload_error, reload_at = self._last_reload or (None, "", None)
        return AgentStatus(
            identity=self.identity,
            version=self.version,
            leader_election=config.leader_election,
            is_leader=election.is_leader if election else not self._shutting_down,
            holder=election.holder if election else self.identity,
            lock=election.lock if election else "",
            lease_age_s=election.lease_age_s if election else None,
            leader_transitions=election.leader_transitions if election else 0,
            renew_latency_s=election.last_renew_latency_s if election else None,
            api_contact_age_s=self._api_contact_age(),
            ready_after_s=self._ready_after_s(),
            last_reload_ok=reload_ok,
            last_reload_error=reload_error,
            last_reload_age_s=None if reload_at is None else now - reload_at,
            token=token.resource_version if token else None,
            token_timestamp=format_timestamp(token.timestamp)
            if token and token.timestamp else None,
            token_persisted=persisted.resource_version if persisted else None,
            checkpoint_writes=self.checkpointer.writes,
            checkpoint_failures=self.checkpointer.failures,
            checkpoint_last_ok=False if self._token_error else self.checkpointer.last_ok,
            loops=tuple(loops),
            workers=self.pool.snapshot(),
            election_requests=election.requests if election else {},
        )


def _give_up(limit: float) -> None:
    logger.error("shutdown did not finish within {:.0f}s: exiting anyway", limit)
    logs.flush()
    os._exit(1)


def run(config_path: str | None) -> int:
    """Load and validate the configuration (exit 2 before any API call), then run."""
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", flush=True, file=sys.stderr)
        return EXIT_INVALID
    config = loaded.config
    secrets_ = [s for s in (config.api_key.get_secret_value(),) if s]
    logs.setup_logging(level=loguru_level(config.log_level), json=config.log_format_json,
                       secrets=secrets_)
    try:
        load_configuration(worker_settings(config).kube)
    except Exception as exc:  # kubernetes.config raises several types; all mean "no access"
        logger.error("cannot load Kubernetes credentials ({}): {}",
                     config.kubernetes_kubeconfig_path or "in-cluster / ~/.kube/config",
                     str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        logs.flush()
        return EXIT_INVALID
    return Agent(loaded, config_path=config_path).run()

