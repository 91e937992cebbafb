"""``kubesim serve`` as a real process: READY line, working kubeconfig, clean SIGTERM exit."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from kubernetes import client, config


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "kubesim", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), (line, proc.stderr.read() if proc.poll() else "")
    return proc, line.split()[1]


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=15)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_ready_and_exits_cleanly(tmp_path, sig):
    kubeconfig = tmp_path / "kc.yaml"
    proc, url = _start("--port", "0", "--kubeconfig", str(kubeconfig), "--admin-token", "tok",
                       "--history", "50", "--event-ttl", "60")
    try:
        assert url.startswith("http://127.0.0.1:")
        loaded = yaml.safe_load(kubeconfig.read_text())
        assert loaded["current-context"] == "kubesim"
        assert loaded["clusters"][0]["cluster"]["server"] == url
        api_client = config.new_client_from_config(str(kubeconfig))
        names = [n.metadata.name for n in client.CoreV1Api(api_client).list_namespace().items]
        assert "kube-system" in names
    finally:
        started = time.monotonic()
        assert _stop(proc, sig) == 0
        assert time.monotonic() - started < 10


def test_serve_tls_with_kubectl(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH")
    kubeconfig = tmp_path / "kc.yaml"
    proc, url = _start("--tls", "--kubeconfig", str(kubeconfig))
    try:
        assert url.startswith("https://127.0.0.1:")
        out = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get", "ns", "-o",
                              "name"], capture_output=True, text=True, timeout=60,
                             env={"HOME": str(tmp_path), "KUBECACHEDIR": str(tmp_path / "c")})
        assert out.returncode == 0, out.stderr
        assert "namespace/default" in out.stdout.split()
    finally:
        assert _stop(proc) == 0


def test_bad_arguments_fail_with_a_clear_message():
    result = subprocess.run([sys.executable, "-m", "kubesim", "serve", "--history", "0"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--history" in result.stderr
