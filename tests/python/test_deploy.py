"""deploy/ validated offline: every Kubernetes manifest (base and overlays, rendered by
`kubectl kustomize`) against the Kubernetes schemas (kubernetes-validate) or, for custom
resources, the schema of their CRD (KServe, prometheus-operator); the compose file against the
compose spec; the Dockerfile with hadolint and by structure; Prometheus' compose config with
promtool. And the manifests' args and probes are the server's own: infera starts with the args
of the Deployment and of the KServe runtime, and every probe and scrape path answers."""
import copy
import gzip
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from conftest import BINARY, ROOT, FIXTURES, free_port

DEPLOY = ROOT / "deploy"
SCHEMAS = ROOT / "tests" / "fixtures" / "schemas"
K8S_VERSION = "1.33.0"


def crd_schemas():
    out = {}
    for f in SCHEMAS.glob("*.json.gz"):
        d = json.loads(gzip.decompress(f.read_bytes()))
        out[(f"{d['group']}/{d['version']}", d["kind"])] = d["schema"]
    return out


def kustomize(path):
    p = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def validate(doc, crds):
    key = (doc["apiVersion"], doc["kind"])
    if key in crds:
        jsonschema.Draft7Validator(crds[key]).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["base", "overlays/dev", "overlays/production"])
def test_kustomizations_render_and_validate(overlay):
    docs = kustomize(DEPLOY / "k8s" / overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "ServiceMonitor"])
    crds = crd_schemas()
    for d in docs:
        validate(d, crds)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/models", "/tmp"}
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_a_broken_manifest_is_caught():
    crds = crd_schemas()
    docs = kustomize(DEPLOY / "k8s" / "base")
    dep = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(dep, crds)
    sm = copy.deepcopy(next(d for d in docs if d["kind"] == "ServiceMonitor"))
    sm["spec"]["endpoints"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        validate(sm, crds)


def test_the_autoscalers_custom_metric_is_served_by_the_adapter_and_exported():
    hpa = yaml.safe_load((DEPLOY / "k8s" / "base" / "hpa.yaml").read_text())
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    cm = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "adapter-config.yaml").read_text())
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"] for r in rules}
    assert names and set(names) <= served
    documented = (ROOT / "docs" / "observability.md").read_text()
    for r in rules:
        series = re.match(r"(\w+)\{", r["seriesQuery"]).group(1)
        assert f"| `{series}` |" in documented


def test_kserve_manifests_validate():
    crds = crd_schemas()
    for f in ("clusterservingruntime.yaml", "inferenceservice.yaml"):
        doc = yaml.safe_load((DEPLOY / "kserve" / f).read_text())
        assert (doc["apiVersion"], doc["kind"]) in crds
        validate(doc, crds)
    rt = yaml.safe_load((DEPLOY / "kserve" / "clusterservingruntime.yaml").read_text())
    formats = {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    assert formats >= {"onnx", "triton"} and set(rt["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"]["model"]["runtime"] == rt["metadata"]["name"]


def test_compose_file_follows_the_compose_spec_and_its_files_exist():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    # The spec says draft-07 (its "$schema" lacks the trailing "#" jsonschema looks for).
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)
    assert set(compose["services"]) == {"infera", "prometheus", "grafana", "node-exporter", "cadvisor"}
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts {src}, which is not in deploy/"
    build = compose["services"]["infera"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    bad = copy.deepcopy(compose)
    bad["services"]["infera"]["ports"] = "8000"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(bad)


def test_compose_prometheus_config_checks():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = {}
    for v in compose["services"]["prometheus"]["volumes"]:
        src, dst = v.split(":")[:2]
        if src.startswith("."):
            mounts[dst] = src
    # The rule file the config names is the one the compose file mounts there.
    assert mounts[cfg["rule_files"][0]] == "./prometheus/rules.yml"
    targets = {t for j in cfg["scrape_configs"] for s in j["static_configs"] for t in s["targets"]}
    assert {t.split(":")[0] for t in targets} == {"infera", "node-exporter", "cadvisor"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs Debian's prometheus")
def test_promtool_accepts_the_compose_prometheus_config(tmp_path):
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_lints_clean_and_has_the_runtime_it_needs():
    p = subprocess.run(["hadolint", "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    d = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages = [i for i in d.structure if i["instruction"] == "FROM"]
    assert len(stages) >= 2, "multi-stage: build, then a small runtime"
    final = d.structure[[i["startline"] for i in d.structure].index(stages[-1]["startline"]):]
    last = {i["instruction"]: i["value"] for i in final}
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert "/v2/health/ready" in last["HEALTHCHECK"]
    assert "ORT_DYLIB_PATH" in last["ENV"]
    for i in final:
        if i["instruction"] == "COPY" and "--from" not in i["value"]:
            assert (ROOT / i["value"].split()[0]).exists()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target" in ignored and ".git" in ignored


def probe_paths(container):
    return [container[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in container]


def start_with(args, tmp_path, mounts, ports):
    """Starts infera with a manifest's args: its paths mapped into tmp_path, its ports to free
    loopback ports."""
    out = []
    for a in args:
        for src, dst in mounts.items():
            a = a.replace(src, str(dst))
        m = re.match(r"--(http|grpc|metrics)-port=(\d+)$", a)
        if m:
            a = f"--{m.group(1)}-port={ports[int(m.group(2))]}"
        out.append(a.replace("--host=0.0.0.0", "--host=127.0.0.1"))
    assert out[0] == "serve"
    log = open(tmp_path / "infera.log", "w")
    proc = subprocess.Popen([str(BINARY), *out], stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def wait_ok(url, proc, log_path, timeout=30):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered:\n{log_path.read_text()}")


def test_the_deployments_args_and_probes_work_with_the_server(tmp_path):
    dep = next(d for d in kustomize(DEPLOY / "k8s" / "base") if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    keys = tmp_path / "keys"
    keys.mkdir()
    p = subprocess.run([str(BINARY), "keys", "create", "--file", str(keys / "keys.toml"), "--id", "shop",
                        "--role", "infer"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    models = tmp_path / "models"
    shutil.copytree(FIXTURES, models)
    port_of = {pp["name"]: pp["containerPort"] for pp in c["ports"]}
    ports = {n: free_port() for n in port_of.values()}
    proc, log = start_with(c["args"], tmp_path, {"/models": models, "/etc/infera/keys": keys,
                                                 "/var/lib/infera": tmp_path / "data"}, ports)
    try:
        for probe in probe_paths(c):
            port = ports[port_of[probe["port"]]]
            status, _ = wait_ok(f"http://127.0.0.1:{port}{probe['path']}", proc, tmp_path / "infera.log")
            assert status == 200, probe
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        status, body = wait_ok(f"http://127.0.0.1:{ports[int(ann['prometheus.io/port'])]}{ann['prometheus.io/path']}",
                               proc, tmp_path / "infera.log")
        assert status == 200 and b"infera_api_requests_total" in body
        sm = next(d for d in kustomize(DEPLOY / "k8s" / "base") if d["kind"] == "ServiceMonitor")
        ep = sm["spec"]["endpoints"][0]
        status, _ = wait_ok(f"http://127.0.0.1:{ports[port_of[ep['port']]]}{ep['path']}", proc, tmp_path / "infera.log")
        assert status == 200
        # Keys are on: inference without one is refused.
        req = urllib.request.Request(f"http://127.0.0.1:{ports[port_of['http']]}/v2/models/simple")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 401
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_the_kserve_runtimes_args_and_probes_work_with_the_server(tmp_path):
    rt = yaml.safe_load((DEPLOY / "kserve" / "clusterservingruntime.yaml").read_text())
    c = rt["spec"]["containers"][0]
    assert c["command"] == ["infera"]
    models = tmp_path / "mnt-models"
    shutil.copytree(FIXTURES, models)
    declared = {int(m.group(1)) for a in c["args"] for m in [re.match(r"--\w+-port=(\d+)$", a)] if m}
    ports = {p: free_port() for p in declared}
    proc, log = start_with(c["args"], tmp_path, {"/mnt/models": models}, ports)
    try:
        for probe in probe_paths(c):
            status, _ = wait_ok(f"http://127.0.0.1:{ports[probe['port']]}{probe['path']}", proc, tmp_path / "infera.log")
            assert status == 200, probe
        ann = rt["spec"]["annotations"]
        status, body = wait_ok(f"http://127.0.0.1:{ports[int(ann['prometheus.kserve.io/port'])]}{ann['prometheus.kserve.io/path']}",
                               proc, tmp_path / "infera.log")
        assert status == 200 and b"nv_inference_count" in body
        # The gRPC port KServe routes to (h2c) is infera's gRPC port.
        import grpc
        import tritonclient.grpc.service_pb2 as pb
        import tritonclient.grpc.service_pb2_grpc as pb_grpc
        h2c = next(p["containerPort"] for p in c["ports"] if p["name"] == "h2c")
        stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{ports[h2c]}"))
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        # v2 over REST on the port KServe sends HTTP to.
        status, body = wait_ok(f"http://127.0.0.1:{ports[8080]}/v2/models/simple", proc, tmp_path / "infera.log")
        assert status == 200 and json.loads(body)["name"] == "simple"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
