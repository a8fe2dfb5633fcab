"""Every manifest in infra/ validated offline: KubeRay kinds strictly against the KubeRay CRDs (../shared), built-in
kinds with kubernetes-validate, plus operator rules (name lengths, min ≤ max, cron) and our own (rayVersion = image
tag, head num-cpus "0", GPU groups from 0, S3 keys from Secrets, token auth). A broken copy of each must fail."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from dynagen.app.k8s_validate import check_cron, load_crds, validate_docs, validate_file

INFRA = Path(__file__).resolve().parents[2] / "infra"
MANIFESTS = sorted(p.name for p in INFRA.glob("*.yaml"))
RAY_KINDS = {"RayCluster", "RayJob", "RayCronJob", "RayService"}


@pytest.fixture(scope="module")
def crds(shared_dir):
    d = shared_dir / "kuberay" / "crds"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return load_crds(d)


def docs_of(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def problems(docs, crds) -> list[str]:
    return [str(p) for p in validate_docs([(f"#{i}", d) for i, d in enumerate(docs)], crds)]


def test_the_expected_manifests_exist():
    assert {"raycluster.autoscaler.yaml", "rayjob.images.yaml", "raycronjob.nightly.yaml", "cronjob.nightly.yaml",
            "rayservice.online.yaml", "configmap.nightly.yaml"} <= set(MANIFESTS)
    assert all(re.fullmatch(r"[a-z]+\.[a-z-]+\.yaml", n) for n in MANIFESTS)  # <kind>.<feature>.yaml


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid(name, crds):
    assert [str(p) for p in validate_file(INFRA / name, crds)] == []


# A typo (or wrong value) per manifest, as a person would make it: each copy must fail validation.
BROKEN_TEXT = {
    "raycluster.autoscaler.yaml": ("enableInTreeAutoscaling:", "enableInTreeAutoscalling:", "enableInTreeAutoscalling"),
    "rayjob.images.yaml": ("shutdownAfterJobFinishes:", "shutdownAfterJobFinish:", "shutdownAfterJobFinish"),
    "raycronjob.nightly.yaml": ('schedule: "0 2 * * *"', 'schedule: "0 26 * * *"', "not a valid cron"),
    "cronjob.nightly.yaml": ("successfulJobsHistoryLimit:", "successfulJobHistoryLimit:", "successfulJobHistoryLimit"),
    "rayservice.online.yaml": ("serveConfigV2:", "serveConfig:", "serveConfig"),
    "configmap.nightly.yaml": ("kind: ConfigMap", "kind: Configmap", "Configmap"),
}


@pytest.mark.parametrize("name", MANIFESTS)
def test_broken_copy_fails(name, crds, tmp_path):
    old, new, expect = BROKEN_TEXT[name]
    text = (INFRA / name).read_text()
    assert old in text, f"{name}: the mutation no longer applies; update BROKEN_TEXT"
    broken = tmp_path / name
    broken.write_text(text.replace(old, new, 1))
    found = [str(p) for p in validate_file(broken, crds)]
    assert found and any(expect in p for p in found), found


def _ray_docs():
    for name in MANIFESTS:
        for i, doc in enumerate(docs_of(name)):
            if doc["kind"] in RAY_KINDS:
                yield name, i, doc
            for key, text in (doc.get("data") or {}).items():  # the RayJob inside the CronJob's ConfigMap
                inner = yaml.safe_load(text)
                if isinstance(inner, dict) and inner.get("kind") in RAY_KINDS:
                    yield f"{name}:{key}", i, inner


def _cluster(doc):
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayCronJob": lambda: spec["jobTemplate"]["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


RAY_DOCS = list(_ray_docs())
IDS = [f"{n}#{i}" for n, i, _ in RAY_DOCS]


@pytest.mark.parametrize("name,i,doc", RAY_DOCS, ids=IDS)
def test_operator_and_project_rules_catch_mistakes(name, i, doc, crds):
    assert problems([doc], crds) == []
    cases = []
    d = copy.deepcopy(doc)
    d["metadata"].pop("generateName", None)
    d["metadata"]["name"] = "n" * 60
    cases.append((d, "allows at most"))
    d = copy.deepcopy(doc)
    g = _cluster(d)["workerGroupSpecs"][-1]
    g["minReplicas"], g["maxReplicas"] = 3, 2
    cases.append((d, "minReplicas 3 > maxReplicas 2"))
    d = copy.deepcopy(doc)
    g = _cluster(d)["workerGroupSpecs"][-1]
    g["maxReplicas"] = "four"
    cases.append((d, "maxReplicas"))
    d = copy.deepcopy(doc)
    _cluster(d)["rayVersion"] = "2.59.0"
    cases.append((d, "but rayVersion is 2.59.0"))
    d = copy.deepcopy(doc)
    _cluster(d)["headGroupSpec"]["rayStartParams"]["num-cpus"] = "4"
    cases.append((d, "num-cpus must be"))
    d = copy.deepcopy(doc)
    _cluster(d)["authOptions"]["mode"] = "disabled"
    cases.append((d, "authOptions.mode"))
    d = copy.deepcopy(doc)
    env = _cluster(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    env[0] = {"name": "AWS_ACCESS_KEY_ID", "value": "AKIA-INLINE"}
    cases.append((d, "must come from a Secret"))
    d = copy.deepcopy(doc)
    _cluster(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    cases.append((d, "imagePullPolicyy"))
    for bad, expect in cases:
        found = problems([bad], crds)
        assert any(expect in p for p in found), (expect, found)


def test_gpu_groups_scale_from_zero_with_gpus_from_limits():
    for name, i, doc in RAY_DOCS:
        for g in _cluster(doc)["workerGroupSpecs"]:
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            if g["groupName"] == "gpu":
                assert g["minReplicas"] == 0 and limits["nvidia.com/gpu"] == "1", name
                assert "num-gpus" not in g["rayStartParams"], name  # taken from the container limit


def test_autoscaler_cluster_and_jobs_have_their_lifecycle_fields():
    (cluster,) = docs_of("raycluster.autoscaler.yaml")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert cluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    (job,) = docs_of("rayjob.images.yaml")
    s = job["spec"]
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] > 0 and s["activeDeadlineSeconds"] > 0
    (cron,) = docs_of("raycronjob.nightly.yaml")
    assert "--feature-gates=RayCronJob=true" in (INFRA / "raycronjob.nightly.yaml").read_text()
    assert cron["spec"]["jobTemplate"]["entrypoint"].startswith("python -m jobs.nightly")
    kinds = [d["kind"] for d in docs_of("cronjob.nightly.yaml")]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]


def test_nightly_configmap_holds_a_valid_nightly_file():
    from pipelines.nightly import parse_spec

    (cm,) = docs_of("configmap.nightly.yaml")
    spec = parse_spec(yaml.safe_load(cm["data"]["nightly.yaml"]), "configmap")
    assert spec.output.startswith("s3://") and {j.kind for j in spec.jobs} == {"images", "llm"}


def test_dockerfile_pins_the_same_ray_and_torch():
    text = (INFRA / "Dockerfile").read_text()
    ray = re.search(r"ARG RAY_VERSION=(\S+)", text).group(1)
    versions = {_cluster(doc)["rayVersion"] for _, _, doc in RAY_DOCS}
    assert versions == {ray}
    pyproject = (INFRA.parent / "pyproject.toml").read_text()
    torch = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    assert f"torch=={torch}" in text


@pytest.mark.parametrize("expr,ok", [("0 2 * * *", True), ("*/15 * * * 1-5", True), ("@daily", True),
                                     ("0 24 * * *", False), ("0 2 * *", False), ("@sometimes", False)])
def test_cron_syntax(expr, ok):
    assert (check_cron(expr) is None) == ok


def test_autoscaling_bench_mirrors_the_raycluster():
    """bench/autoscaling.py demonstrates scaling on a fake cluster shaped like raycluster.autoscaler.yaml."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_autoscaling", INFRA.parent / "bench" / "autoscaling.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = bench.autoscaling_config("127.0.0.1:1")
    (cluster,) = docs_of("raycluster.autoscaler.yaml")
    head = cfg["available_node_types"]["ray.head.default"]
    assert head["resources"]["CPU"] == int(cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"]) == 0
    cpu_group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "cpu")
    assert cfg["available_node_types"]["cpu"]["min_workers"] == cpu_group["minReplicas"] == 0
    assert cfg["provider"]["gcs_address"] == "127.0.0.1:1"  # never the default :6379 (someone else's cluster)


def test_rayservice_wires_the_api_key_from_a_secret_and_builds_with_it(monkeypatch):
    """Every pod gets DYNAGEN_SERVE__API_KEY from a Secret (never a literal); the app args bind beyond loopback and
    hold no key; app_builder with those args and that env builds (and without the key refuses)."""
    from dynagen.app.serve.deployments import AuthConfigError, app_builder

    doc = docs_of("rayservice.online.yaml")[0]
    cluster = doc["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for g in groups:
        for c in g["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            ref = env["DYNAGEN_SERVE__API_KEY"]
            assert "value" not in ref and ref["valueFrom"]["secretKeyRef"] == {"name": "dynagen-serve", "key": "api_key"}
    app = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["serve.host"] == "0.0.0.0" and not any("api_key" in k for k in app["args"])
    monkeypatch.delenv("DYNAGEN_SERVE__API_KEY", raising=False)
    with pytest.raises(AuthConfigError):
        app_builder(app["args"])
    monkeypatch.setenv("DYNAGEN_SERVE__API_KEY", "from-the-secret-0123456789")
    assert app_builder(app["args"]) is not None
