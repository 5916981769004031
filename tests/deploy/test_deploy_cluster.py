"""The two cluster shapes in deploy/kubernetes (issue 18), checked like the other manifests:
every document validates against the Kubernetes schemas (strict), every file is listed in its
kustomization, the embedded config passes the real `mirror check-config` with the variables
the pods set, and names, labels, ports and the peers' DNS name agree with each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from mirror.config import load_config
from tests.deploy.test_deploy import K8S, K8S_VERSIONS, env_names, load_all

SHAPES = {"cluster-replicas": "Deployment", "cluster-daemonset": "DaemonSet"}


def docs(shape: str) -> list[dict[str, Any]]:
    return [d for p in sorted((K8S / shape).glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in load_all(p)]


def kind(shape: str, name: str) -> list[dict[str, Any]]:
    return [d for d in docs(shape) if d["kind"] == name]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cluster_manifests_validate(shape: str, version: str) -> None:
    found = docs(shape)
    assert SHAPES[shape] in {d["kind"] for d in found}
    for doc in found:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_kustomization_lists_every_file(shape: str) -> None:
    kust = load_all(K8S / shape / "kustomization.yaml")[0]
    files = sorted(p.name for p in (K8S / shape).glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == files


@pytest.mark.parametrize("shape", SHAPES)
def test_cluster_pieces_fit_together(shape: str, tmp_path: Path) -> None:
    (cm,) = kind(shape, "ConfigMap")
    (workload,) = kind(shape, SHAPES[shape])
    text = cm["data"]["mirror.yaml"]
    pod = workload["spec"]["template"]
    c = next(c for c in pod["spec"]["containers"] if c["name"] == "mirror")
    env = {e["name"]: e for e in c["env"]}
    # The variables cluster.self names come from the downward API; the secret from a Secret.
    stand_ins = {name: "10.0.0.7" for name in env if name.endswith("_IP")}
    assert stand_ins, env
    for name in stand_ins:
        assert "fieldRef" in env[name]["valueFrom"]
    config = load_config(_write(tmp_path, text),
                         env={**{n: "x" * 32 for n in env_names(text)}, **stand_ins})
    cl = config.cluster
    assert cl is not None and cl.dns is not None
    assert env[env_names(text).intersection(env).pop()]["valueFrom"]["secretKeyRef"]
    assert urlsplit(cl.self_url).hostname == "10.0.0.7"
    # The peers' name is a headless Service in this shape, selecting exactly these pods.
    host = urlsplit(cl.dns).hostname or ""
    service = next(s for s in kind(shape, "Service") if host.startswith(s["metadata"]["name"] + "."))
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert urlsplit(cl.dns).port == urlsplit(cl.self_url).port == config.listen_port
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == config.listen_port
    assert config.cache.object_store is not None  # one cold tier shared by every node
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} <= volumes
    cm_volume = next(v for v in pod["spec"]["volumes"] if "configMap" in v)
    assert cm_volume["configMap"]["name"] == cm["metadata"]["name"]
    r = check_config(text, tmp_path, stand_ins)
    assert r.returncode == 0 and "cluster: self http://10.0.0.7:5000" in r.stdout, r.stderr


def test_daemonset_points_containerd_at_its_own_node() -> None:
    (ds,) = kind("cluster-daemonset", "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    sidecar = next(c for c in spec["containers"] if c["name"] == "hosts-toml")
    assert 'url="http://127.0.0.1:5000"' in sidecar["args"][0]


def test_a_cluster_config_without_its_secret_fails_check_config(tmp_path: Path) -> None:
    (cm,) = kind("cluster-replicas", "ConfigMap")
    text = cm["data"]["mirror.yaml"].replace("  secret_env: MIRROR_CLUSTER_SECRET\n", "")
    assert "MIRROR_CLUSTER_SECRET" not in text
    r = check_config(text, tmp_path, {"POD_IP": "10.0.0.7"})
    assert r.returncode == 2 and "cluster: secret_env or secret_file is required" in r.stderr


def check_config(text: str, tmp_path: Path,
                 extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real check-config, with a 32-character stand-in for each *_env the config names."""
    path = _write(tmp_path, text)
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_CONFIG"}
    env.update({name: "s" * 32 for name in env_names(text)}, **extra)
    return subprocess.run([sys.executable, "-m", "mirror", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path
