"""Everything in deploy/ is checked the way its consumer would read it (issue 10).

- every YAML file parses (all documents), every JSON file too;
- every mirror config in deploy/ (deploy/mirror.yaml, the Kubernetes ConfigMap, the compose
  `configs`) passes the real `mirror check-config`, with each `*_env` variable it names set to a
  dummy value;
- the Kubernetes manifests validate against the Kubernetes OpenAPI schemas (strict: unknown
  fields fail), and their names, labels, ports, paths and users agree with each other, with the
  image and with the embedded config;
- the node DaemonSet's script runs here and writes the same hosts.toml files as
  `mirror client-config`;
- the compose file's references resolve; the systemd unit passes `systemd-analyze verify`
  without a warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from mirror.cli.clientconf import client_files
from mirror.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
UNIT = DEPLOY / "systemd" / "mirror.service"
# The oldest Kubernetes release the schemas here cover, and the newest.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
IMAGE_UID = 10001  # Dockerfile: ARG UID=10001


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in load_all(p)]


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d["kind"] == kind]


def env_names(config_text: str) -> set[str]:
    """Environment variables a mirror config names through `*_env` keys."""
    return set(re.findall(r"^\s*[a-z_]+_env:\s*([A-Za-z_][A-Za-z0-9_]*)", config_text, re.M))


def embedded_configs() -> dict[str, str]:
    """Every mirror config in deploy/, by where it lives."""
    found = {"deploy/mirror.yaml": (DEPLOY / "mirror.yaml").read_text()}
    for cm in k8s_kind("ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if key.endswith("mirror.yaml"):
                found[f"ConfigMap {cm['metadata']['name']} {key}"] = text
    compose = load_all(COMPOSE)[0]
    for name, cfg in compose.get("configs", {}).items():
        if name.startswith("mirror"):
            found[f"compose configs.{name}"] = cfg["content"]
    return found


def check_config(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "mirror.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_CONFIG"}
    env.update({name: "dummy-value" for name in env_names(text)})
    return subprocess.run([sys.executable, "-m", "mirror", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)


# ------------------------------------------------------------------ every file parses


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert load_all(path), f"{path} holds no YAML document"


def test_json_parses() -> None:
    files = sorted(DEPLOY.rglob("*.json"))
    assert files
    for path in files:
        json.loads(path.read_text())


# ------------------------------------------------------------------ embedded mirror configs


def test_every_embedded_config_passes_check_config(tmp_path: Path) -> None:
    configs = embedded_configs()
    assert len(configs) >= 3, configs.keys()
    for where, text in configs.items():
        r = check_config(text, tmp_path)
        assert r.returncode == 0, f"{where}:\n{r.stderr}"
        assert ": ok (" in r.stdout, where


def test_check_config_here_can_fail(tmp_path: Path) -> None:
    text = embedded_configs()["compose configs.mirror-config"]
    path = tmp_path / "mirror.yaml"
    path.write_text(text)  # without the secret's variable set
    env = {k: v for k, v in os.environ.items() if k not in env_names(text)}
    r = subprocess.run([sys.executable, "-m", "mirror", "check-config", "-c", str(path)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "secret_access_key_env" in r.stderr, r.stderr
    r = check_config(text.replace("tag_ttl:", "tag_tll:"), tmp_path)
    assert r.returncode == 2 and "cache.tag_tll: unknown key" in r.stderr, r.stderr


# ------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_against_the_schemas(version: str) -> None:
    docs = k8s_docs()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == ["ConfigMap", "DaemonSet", "Deployment", "Namespace", "PersistentVolumeClaim",
                     "Service"]
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name} ({doc['kind']}) against Kubernetes {version}: {e.message} "
                        f"at {list(e.path)}")


def test_schema_validation_can_fail() -> None:
    deployment = k8s_kind("Deployment")[0]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = load_all(K8S / "kustomization.yaml")[0]
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == files
    namespaces = {d["metadata"].get("namespace") for _, d in k8s_docs() if d["kind"] != "Namespace"}
    assert namespaces == {kust["namespace"]}
    assert {i["name"] for i in kust["images"]} == {"mirror"}


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def mounts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(doc)["volumeMounts"]}


def test_kubernetes_pieces_fit_together(tmp_path: Path) -> None:
    (cm,) = k8s_kind("ConfigMap")
    (deployment,) = k8s_kind("Deployment")
    (service,) = k8s_kind("Service")
    (pvc,) = k8s_kind("PersistentVolumeClaim")
    (config_path := tmp_path / "mirror.yaml").write_text(cm["data"]["mirror.yaml"])
    config = load_config(config_path, env={n: "x" for n in env_names(cm["data"]["mirror.yaml"])})

    c = container(deployment)
    assert c["image"].split(":")[0] == "mirror"  # renamed by kustomization.yaml `images`
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["MIRROR_CONFIG"] == "/etc/mirror/mirror.yaml"
    m = mounts(deployment)
    assert m["/etc/mirror"]["configMap"]["name"] == cm["metadata"]["name"]
    assert m[str(config.cache.dir)]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "emptyDir" in m["/tmp"]  # the root filesystem is read-only
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == config.listen_port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == IMAGE_UID and pod_security["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # claim sized above the cache budget
    claim = pvc["spec"]["resources"]["requests"]["storage"]
    assert claim.endswith("Gi") and int(claim[:-2]) * 1024**3 > config.cache.max_size

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] == "http"
    # The DaemonSet reads MIRROR_SERVICE_HOST/PORT: Kubernetes derives them from this name.
    assert service["metadata"]["name"] == "mirror"


def daemonset_script() -> tuple[dict[str, Any], str]:
    (ds,) = k8s_kind("DaemonSet")
    c = container(ds)
    assert c["command"] == ["/bin/sh", "-c"]
    return ds, c["args"][0]


def run_daemonset_script(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    _, script = daemonset_script()
    (tmp_path / "mirror.yaml").write_text(config_text)
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MIRROR_SERVICE_HOST": "10.96.0.42", "MIRROR_SERVICE_PORT": "5000",
           "MIRROR_CONFIG": str(tmp_path / "mirror.yaml"), "CERTS_D": str(tmp_path / "certs.d"),
           "ONCE": "1", "TMPDIR": str(tmp_path)}
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env=env)


def test_node_daemonset_writes_hosts_toml_like_client_config(tmp_path: Path) -> None:
    ds, _ = daemonset_script()
    c = container(ds)
    env = {e["name"]: e.get("value") for e in c["env"]}
    m = mounts(ds)
    assert m[env["CERTS_D"]]["hostPath"]["path"] == "/etc/containerd/certs.d"
    assert m[str(Path(env["MIRROR_CONFIG"]).parent)]["configMap"]["name"] == "mirror-config"
    assert ds["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists"}]

    (cm,) = k8s_kind("ConfigMap")
    text = cm["data"]["mirror.yaml"]
    # A config naming a secret the DaemonSet does not have must still work (stand-ins).
    text = text.replace("# password_env: DOCKERHUB_TOKEN", "password_env: DOCKERHUB_TOKEN")
    text = text.replace("# username: myuser", "username: myuser")
    assert re.search(r"^ +password_env: DOCKERHUB_TOKEN", text, re.M)
    r = run_daemonset_script(text, tmp_path)
    assert r.returncode == 0, r.stderr
    config = load_config(tmp_path / "mirror.yaml", env={"DOCKERHUB_TOKEN": "x"})
    want = {rel: body for rel, body in client_files(config, "http://10.96.0.42:5000").items()
            if rel.startswith("certs.d/")}
    assert len(want) == len(config.upstreams) == 4
    for rel, body in want.items():
        assert (tmp_path / rel).read_text() == body, rel
        assert f"{tmp_path / rel}: http://10.96.0.42:5000" in r.stdout
    assert not list((tmp_path / "certs.d").rglob(".hosts.toml.tmp"))
    # unchanged files are left alone
    again = run_daemonset_script(text, tmp_path)
    assert again.returncode == 0 and "wrote" not in again.stdout, again.stdout + again.stderr


def test_node_daemonset_refuses_to_run_without_the_service(tmp_path: Path) -> None:
    _, script = daemonset_script()
    r = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], "ONCE": "1"})
    assert r.returncode != 0 and "no mirror Service" in r.stderr


# ------------------------------------------------------------------ compose


def test_compose_references_resolve() -> None:
    compose = load_all(COMPOSE)[0]
    services = compose["services"]
    assert set(services) == {"mirror", "seaweedfs"}
    for name, svc in services.items():
        for cfg in svc.get("configs", []):
            assert cfg["source"] in compose["configs"], f"{name}: config {cfg['source']}"
        for vol in svc.get("volumes", []):
            assert vol.split(":", 1)[0] in compose["volumes"], f"{name}: volume {vol}"
        for dep in svc.get("depends_on", {}):
            assert dep in services
    mirror = services["mirror"]
    context = (COMPOSE.parent / mirror["build"]["context"]).resolve()
    assert context == ROOT and (context / "Dockerfile").exists()
    assert mirror["build"]["args"]["BASE"] == "python:3.11-slim"
    (target,) = [c["target"] for c in mirror["configs"]]
    assert mirror["environment"]["MIRROR_CONFIG"] == target

    text = compose["configs"]["mirror-config"]["content"]
    config = load_config_text(text)
    store = config.cache.object_store
    assert store is not None and store.endpoint == "http://seaweedfs:8333"
    assert str(config.cache.dir) == "/var/cache/mirror"
    for var in env_names(text):  # every secret the config names reaches the container
        assert var in mirror["environment"], var
    assert mirror["ports"] == [f"{config.listen_port}:{config.listen_port}"]

    seaweed = services["seaweedfs"]
    assert "-master.telemetry=false" in seaweed["command"]  # weed reports home by default
    assert "-s3.port=8333" in seaweed["command"]
    s3 = json.loads(compose["configs"]["seaweedfs-s3"]["content"].replace(
        "${MIRROR_S3_SECRET}", "dummy"))
    (identity,) = s3["identities"]
    assert identity["credentials"][0]["accessKey"] == store.access_key_id


def load_config_text(text: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mirror.yaml"
        path.write_text(text)
        return load_config(path, env={n: "dummy" for n in env_names(text)})


# ------------------------------------------------------------------ systemd, Dockerfile


def test_systemd_unit_verifies_without_warnings(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (make system-deps: systemd)", pytrace=False)
    text = UNIT.read_text()
    assert "ExecStart=/opt/mirror/bin/mirror serve -c /etc/mirror/mirror.yaml" in text
    assert "CacheDirectory=mirror\n" in text  # /var/cache/mirror, cache.dir of deploy/mirror.yaml
    assert str(load_config_text((DEPLOY / "mirror.yaml").read_text()).cache.dir) == "/var/cache/mirror"
    # verify wants the programs to exist: point them at this environment's mirror
    unit = tmp_path / "mirror.service"
    unit.write_text(text.replace("/opt/mirror/bin/mirror", str(Path(sys.executable).parent / "mirror")))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in r.stderr.splitlines() if str(unit) in line or "mirror" in line]
    assert r.returncode == 0 and not problems, r.stderr
    bad = tmp_path / "bad.service"
    bad.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    r = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in r.stderr  # the check can fail


def test_dockerfile_and_context() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert text.count("FROM ${BASE}") == 2  # multi-stage, both on the base argument
    assert f"ARG UID={IMAGE_UID}" in text and re.search(r"^USER mirror$", text, re.M)
    assert 'VOLUME ["/var/cache/mirror"]' in text
    assert "COPY --from=build /src/deploy/mirror.yaml /etc/mirror/mirror.yaml" in text
    assert "MIRROR_CONFIG=/etc/mirror/mirror.yaml" in text
    healthcheck = re.search(r"^HEALTHCHECK .*\n.*CMD (\[.*\])$", text, re.M)
    assert healthcheck and "urllib.request" in healthcheck.group(1)
    json.loads(healthcheck.group(1))  # exec form: no shell needed
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for needed in ("pyproject.toml", "README.md", "mirror", "deploy/mirror.yaml", "wheelhouse"):
        assert needed in allowed
