"""What happens in the demo's make-believe cluster: a small shop on three nodes.

Pure and deterministic for a given ``random.Random``: ``Story.next()`` returns the next
burst of things the control plane and kubelets would report, as ``New`` events (a first
occurrence) or ``Repeat`` of an earlier one (the same Event object, its ``count`` raised: a
new occurrence Kubernetes folds into the old object). Reasons, messages and emitting
components are the ones real clusters print; the generator writes them through the API.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

__all__ = ["Action", "InvolvedObject", "New", "Repeat", "Story"]

NODES = ("worker-1", "worker-2", "worker-3")
SICK_NODE = "worker-3"


@dataclass(frozen=True, slots=True)
class InvolvedObject:
    kind: str
    name: str
    namespace: str
    uid: str
    api_version: str = "v1"
    field_path: str = ""

    def reference(self) -> dict[str, str]:
        ref = {"kind": self.kind, "name": self.name, "uid": self.uid,
               "apiVersion": self.api_version}
        if self.namespace:
            ref["namespace"] = self.namespace
        if self.field_path:
            ref["fieldPath"] = self.field_path
        return ref


@dataclass(frozen=True, slots=True)
class New:
    """A first occurrence; ``repeat_key`` set if later ``Repeat``s fold into it."""

    involved: InvolvedObject
    type: str
    reason: str
    message: str
    component: str
    host: str = ""
    repeat_key: str = ""


@dataclass(frozen=True, slots=True)
class Repeat:
    """One more occurrence of the event created by the ``New`` with this ``repeat_key``."""

    key: str


Action = New | Repeat


@dataclass(frozen=True, slots=True)
class _App:
    namespace: str
    name: str
    image: str
    kind: str = "Deployment"


_APPS = (
    _App("shop", "frontend", "registry.local/shop/frontend:3.2.0"),
    _App("shop", "cart", "registry.local/shop/cart:1.4.2"),
    _App("shop", "checkout", "registry.local/shop/checkout:2.0.7"),
    _App("payments", "gateway", "registry.local/payments/gateway:5.1.0"),
    _App("monitoring", "prometheus", "quay.io/prometheus/prometheus:v2.53.0", "StatefulSet"),
    _App("kube-system", "coredns", "registry.k8s.io/coredns/coredns:v1.11.1"),
)
_BAD_IMAGE = _App("payments", "ledger", "registry.local/payments/ledger:2.0.1-rc")
NAMESPACES = tuple(sorted({a.namespace for a in (*_APPS, _BAD_IMAGE)} - {"kube-system"}))
"""Namespaces the demo must create (kube-system exists in every cluster)."""


@dataclass
class _Pod:
    app: _App
    ref: InvolvedObject
    node: str
    ip: str


@dataclass
class Story:
    rng: random.Random
    _hashes: dict[str, str] = field(default_factory=dict)
    _uids: dict[tuple[str, str, str], str] = field(default_factory=dict)
    _pods: list[_Pod] = field(default_factory=list)
    _open: dict[str, list[str]] = field(default_factory=dict)
    _node_down: bool = False
    _replicas: dict[str, int] = field(default_factory=dict)
    _job_serial: int = 28_345_120

    def next(self) -> list[Action]:
        """The next burst, chosen by weight; early on, troubles are seeded first."""
        moves = (
            (5.0, self._rollout), (3.0, self._image_backoff), (2.0, self._crashloop),
            (2.0, self._probe_failure), (1.0, self._scale), (0.6, self._node_trouble),
            (0.6, self._oom), (0.6, self._failed_mount), (0.8, self._cronjob),
        )  # fmt: skip
        weights = [w for w, _ in moves]
        move = self.rng.choices([m for _, m in moves], weights)[0]
        return move()

    # -- objects ---------------------------------------------------------------------------

    def _uid(self, kind: str, namespace: str, name: str) -> str:
        key = (kind, namespace, name)
        if key not in self._uids:
            self._uids[key] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        return self._uids[key]

    def _ref(self, kind: str, namespace: str, name: str, api_version: str = "v1",
             field_path: str = "") -> InvolvedObject:
        return InvolvedObject(kind, name, namespace, self._uid(kind, namespace, name),
                              api_version, field_path)

    def _suffix(self, n: int) -> str:
        return "".join(self.rng.choices("bcdfghjklmnpqrstvwxz2456789", k=n))

    def _template_hash(self, app: _App) -> str:
        return self._hashes.setdefault(app.name, f"{self._suffix(9)}")

    def _new_pod(self, app: _App) -> _Pod:
        if app.kind == "StatefulSet":
            name = f"{app.name}-{sum(p.app is app for p in self._pods)}"
        else:
            name = f"{app.name}-{self._template_hash(app)}-{self._suffix(5)}"
        healthy = [n for n in NODES if not (self._node_down and n == SICK_NODE)]
        pod = _Pod(app, self._ref("Pod", app.namespace, name), self.rng.choice(healthy),
                   f"10.244.{self.rng.randint(0, 2)}.{self.rng.randint(2, 250)}")
        self._pods.append(pod)
        del self._pods[:-40]
        return pod

    def _pod_of(self, app: _App) -> _Pod:
        pods = [p for p in self._pods if p.app is app]
        return self.rng.choice(pods) if pods else self._new_pod(app)

    def _container(self, pod: _Pod) -> InvolvedObject:
        return self._ref("Pod", pod.ref.namespace, pod.ref.name,
                         field_path=f"spec.containers{{{pod.app.name}}}")

    def _repeat_or(self, trouble: str, seed: list[Action]) -> list[Action]:
        """Repeat one of ``trouble``'s events, or start it with ``seed`` the first time."""
        keys = self._open.get(trouble)
        if keys and self.rng.random() < 0.85:
            return [Repeat(self.rng.choice(keys))]
        for action in seed:
            if isinstance(action, New) and action.repeat_key:
                self._open.setdefault(trouble, []).append(action.repeat_key)
        return seed

    # -- what happens ------------------------------------------------------------------------

    def _rollout(self) -> list[Action]:
        app = self.rng.choice(_APPS)
        pod = self._new_pod(app)
        owner_kind = "ReplicaSet" if app.kind == "Deployment" else app.kind
        owner_name = (f"{app.name}-{self._template_hash(app)}" if app.kind == "Deployment"
                      else app.name)
        owner = self._ref(owner_kind, app.namespace, owner_name, "apps/v1")
        container = self._container(pod)
        pulled_ms = self.rng.randint(180, 2400)
        controller = ("replicaset-controller" if owner_kind == "ReplicaSet"
                      else "statefulset-controller")
        return [
            New(owner, "Normal", "SuccessfulCreate", f"Created pod: {pod.ref.name}", controller),
            New(pod.ref, "Normal", "Scheduled",
                f"Successfully assigned {app.namespace}/{pod.ref.name} to {pod.node}",
                "default-scheduler"),
            New(container, "Normal", "Pulling", f'Pulling image "{app.image}"', "kubelet",
                pod.node),
            New(container, "Normal", "Pulled",
                f'Successfully pulled image "{app.image}" in {pulled_ms}ms '
                f"({pulled_ms}ms including waiting)", "kubelet", pod.node),
            New(container, "Normal", "Created", f"Created container {app.name}", "kubelet",
                pod.node),
            New(container, "Normal", "Started", f"Started container {app.name}", "kubelet",
                pod.node),
        ]

    def _image_backoff(self) -> list[Action]:
        pod = self._pod_of(_BAD_IMAGE)
        container = self._container(pod)
        image = _BAD_IMAGE.image
        key = pod.ref.name
        return self._repeat_or("image", [
            New(pod.ref, "Normal", "Scheduled",
                f"Successfully assigned {pod.ref.namespace}/{pod.ref.name} to {pod.node}",
                "default-scheduler"),
            New(container, "Normal", "Pulling", f'Pulling image "{image}"', "kubelet",
                pod.node),
            New(container, "Warning", "Failed",
                f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to '
                f'pull and unpack image "{image}": not found', "kubelet", pod.node),
            New(container, "Warning", "Failed", "Error: ErrImagePull", "kubelet", pod.node,
                repeat_key=f"errimagepull:{key}"),
            New(container, "Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet",
                pod.node, repeat_key=f"backoff:{key}"),
            New(container, "Warning", "Failed", "Error: ImagePullBackOff", "kubelet", pod.node,
                repeat_key=f"imagepullbackoff:{key}"),
        ])

    def _crashloop(self) -> list[Action]:
        app = _APPS[3]
        pod = self._pod_of(app)
        return self._repeat_or("crash", [
            New(self._container(pod), "Warning", "BackOff",
                f"Back-off restarting failed container {app.name} in pod "
                f"{pod.ref.name}_{pod.ref.namespace}({pod.ref.uid})", "kubelet", pod.node,
                repeat_key=f"crash:{pod.ref.name}"),
        ])

    def _probe_failure(self) -> list[Action]:
        app = self.rng.choice((_APPS[0], _APPS[2], _APPS[5]))
        pod = self._pod_of(app)
        return self._repeat_or("probe", [
            New(self._container(pod), "Warning", "Unhealthy",
                f'Readiness probe failed: Get "http://{pod.ip}:8080/healthz": context deadline '
                "exceeded (Client.Timeout exceeded while awaiting headers)", "kubelet",
                pod.node, repeat_key=f"probe:{pod.ref.name}"),
        ])

    def _scale(self) -> list[Action]:
        app = _APPS[0]
        before = self._replicas.get(app.name, 3)
        after = max(2, min(8, before + self.rng.choice((-1, 1, 1))))
        self._replicas[app.name] = after
        rs = f"{app.name}-{self._template_hash(app)}"
        verb = "up" if after > before else "down"
        metric = "above" if after > before else "below"
        return [
            New(self._ref("HorizontalPodAutoscaler", app.namespace, app.name, "autoscaling/v2"),
                "Normal", "SuccessfulRescale",
                f"New size: {after}; reason: cpu resource utilization (percentage of request) "
                f"{metric} target", "horizontal-pod-autoscaler"),
            New(self._ref("Deployment", app.namespace, app.name, "apps/v1"), "Normal",
                "ScalingReplicaSet", f"Scaled {verb} replica set {rs} from {before} to {after}",
                "deployment-controller"),
        ]

    def _node_trouble(self) -> list[Action]:
        node = self._ref("Node", "", SICK_NODE)
        if self._node_down and self.rng.random() < 0.5:
            self._node_down = False
            return [New(node, "Normal", "NodeReady",
                        f"Node {SICK_NODE} status is now: NodeReady", "node-controller")]
        if self._node_down:
            pending = self._ref("Pod", "shop", f"checkout-{self._template_hash(_APPS[2])}-p4nd1")
            return self._repeat_or("unschedulable", [
                New(pending, "Warning", "FailedScheduling",
                    "0/3 nodes are available: 1 node(s) had untolerated taint "
                    "{node.kubernetes.io/unreachable: }, 2 Insufficient memory. preemption: "
                    "0/3 nodes are available: 1 Preemption is not helpful for scheduling, "
                    "2 No preemption victims found for incoming pod.", "default-scheduler",
                    repeat_key="unschedulable"),
            ])
        self._node_down = True
        actions: list[Action] = [
            New(node, "Normal", "NodeNotReady", f"Node {SICK_NODE} status is now: NodeNotReady",
                "node-controller"),
        ]
        for pod in [p for p in self._pods if p.node == SICK_NODE][:3]:
            actions.append(New(pod.ref, "Warning", "NodeNotReady", "Node is not ready",
                               "node-controller"))
        return actions

    def _oom(self) -> list[Action]:
        node = self.rng.choice(NODES)
        pid = self.rng.randint(2000, 60000)
        rss = self.rng.randint(900_000, 2_100_000)
        return [New(self._ref("Node", "", node), "Warning", "OOMKilling",
                    f"Memory cgroup out of memory: Killed process {pid} (java) "
                    f"total-vm:4823044kB, anon-rss:{rss}kB, file-rss:0kB, shmem-rss:0kB, "
                    "UID:1000 pgtables:4560kB oom_score_adj:985", "kernel-monitor", node)]

    def _failed_mount(self) -> list[Action]:
        pod = self._pod_of(_APPS[4])
        return self._repeat_or("mount", [
            New(pod.ref, "Warning", "FailedMount",
                'MountVolume.SetUp failed for volume "rules" : configmap "prometheus-rules" '
                "not found", "kubelet", pod.node, repeat_key=f"mount:{pod.ref.name}"),
        ])

    def _cronjob(self) -> list[Action]:
        self._job_serial += self.rng.randint(1, 5)
        job = f"report-{self._job_serial}"
        pod = f"{job}-{self._suffix(5)}"
        cron = self._ref("CronJob", "shop", "report", "batch/v1")
        job_ref = self._ref("Job", "shop", job, "batch/v1")
        return [
            New(cron, "Normal", "SuccessfulCreate", f"Created job {job}", "cronjob-controller"),
            New(job_ref, "Normal", "SuccessfulCreate", f"Created pod: {pod}", "job-controller"),
            New(job_ref, "Normal", "Completed", "Job completed", "job-controller"),
            New(cron, "Normal", "SawCompletedJob",
                f"Saw completed job: {job}, status: Complete", "cronjob-controller"),
        ]
