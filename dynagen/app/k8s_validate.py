"""Validate Kubernetes manifests offline: KubeRay kinds against the KubeRay CRDs, built-in kinds with
``kubernetes-validate``, plus the rules the KubeRay operator enforces that no schema does.

    python -m dynagen.app.k8s_validate --crds ../shared/kuberay/crds infra/*.yaml

No API server is needed (none can run on a CI box). The CRD ``openAPIV3Schema`` is turned into a strict JSON Schema
the way the API server reads it: objects with ``properties`` refuse unknown fields unless marked
``x-kubernetes-preserve-unknown-fields``, ``nullable`` admits null, and schema ``default`` values are applied before
validating. Manifests embedded in a ConfigMap (a ``*.yaml`` data key, e.g. the RayJob the CronJob fallback creates)
are validated too.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

K8S_VERSION = "1.32.0"  # schemas of built-in kinds; CronJob timeZone is GA since 1.27

# Operator-side name limits (KubeRay derives Service/Pod/Job names from them and appends suffixes).
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47, "RayCronJob": 36}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RAY_TAG = re.compile(r"ray-?(\d+\.\d+\.\d+)")  # our image tags carry the Ray version: dynagen:0.1.0-ray2.60.0


@dataclass
class Problem:
    where: str  # file[#doc] and path inside the document
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


# ---- CRD schema → JSON Schema -------------------------------------------------------------------------------------


def to_json_schema(node: Any) -> Any:
    """A strict JSON Schema from a CRD openAPIV3Schema node (recursive copy)."""
    if isinstance(node, list):
        return [to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill in ``default`` values the way the API server does before validation (in place; returns obj)."""
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                apply_defaults(sub, obj[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in obj.items():
                if name not in (schema.get("properties") or {}):
                    apply_defaults(extra, value)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(schema["items"], item)
    return obj


_STRICT: dict[int, tuple[Any, Any]] = {}


def _strict_schema(raw: dict[str, Any]) -> Any:
    """to_json_schema, converted once per loaded CRD version (validating many documents reuses it)."""
    hit = _STRICT.get(id(raw))
    if hit is None or hit[0] is not raw:
        hit = _STRICT[id(raw)] = (raw, to_json_schema(raw))
    return hit[1]


def load_crds(crd_dir: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """{(apiVersion, kind): openAPIV3Schema} for every served version of every CRD in ``crd_dir``."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are ~2 MB of YAML each
    out = {}
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for v in doc["spec"]["versions"]:
                if v.get("served", True):
                    out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    if not out:
        raise FileNotFoundError(f"no CustomResourceDefinitions in {crd_dir}")
    return out


# ---- checks -------------------------------------------------------------------------------------------------------


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "(document)"


def check_schema(doc: dict[str, Any], crds: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Schema errors for one document (CRD kinds strictly against the CRDs, built-in kinds with kubernetes-validate)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in crds:
        from jsonschema import Draft202012Validator

        strict = _strict_schema(crds[key])
        body = apply_defaults(strict, copy.deepcopy(doc))
        errors = sorted(Draft202012Validator(strict).iter_errors(body), key=lambda e: list(e.absolute_path))
        return [f"{_path(e.absolute_path)}: {e.message[:300]}" for e in errors]
    if key[0].startswith("ray.io/"):
        return [f"unknown KubeRay kind/version {key[1]} {key[0]} (not in the CRDs)"]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{_path(e.path)}: {e.message[:300]}"]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
        return [f"no schema for {key[1]} {key[0]} in Kubernetes {K8S_VERSION}: {e}"]
    return []


def _cluster_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "RayCluster":
        yield "spec", spec
    elif kind == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        yield "spec.rayClusterSpec", spec["rayClusterSpec"]
    elif kind == "RayCronJob" and isinstance((spec.get("jobTemplate") or {}).get("rayClusterSpec"), dict):
        yield "spec.jobTemplate.rayClusterSpec", spec["jobTemplate"]["rayClusterSpec"]
    elif kind == "RayService" and isinstance(spec.get("rayClusterConfig"), dict):
        yield "spec.rayClusterConfig", spec["rayClusterConfig"]


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def check_operator_rules(doc: dict[str, Any]) -> list[str]:
    """What the KubeRay operator (or the API server) rejects although the schema allows it."""
    problems = []
    kind, meta = doc.get("kind", ""), doc.get("metadata") or {}
    limit = NAME_LIMITS.get(kind, 52 if kind == "CronJob" else 253)
    if meta.get("name"):
        name = meta["name"]
        if not DNS1123.match(name):
            problems.append(f"metadata.name: '{name}' is not a DNS-1123 label (lower case, digits, '-')")
        if len(name) > limit:
            problems.append(f"metadata.name: '{name}' is {len(name)} characters; {kind} allows at most {limit}")
    elif meta.get("generateName"):  # the API server appends 5 random characters
        prefix = meta["generateName"]
        if not DNS1123.match(prefix.rstrip("-") or "-"):
            problems.append(f"metadata.generateName: '{prefix}' is not a DNS-1123 prefix")
        if len(prefix) + 5 > limit:
            problems.append(f"metadata.generateName: '{prefix}' + 5 characters exceeds {limit} for {kind}")
    else:
        problems.append("metadata.name: missing")
    for where, cluster in _cluster_specs(doc):
        for i, g in enumerate(cluster.get("workerGroupSpecs") or []):
            lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas", 2147483647), g.get("replicas")
            if not all(isinstance(x, int) for x in (lo, hi, n if n is not None else 0)):
                continue  # a type error, already reported by the schema check
            gw = f"{where}.workerGroupSpecs[{i}] ({g.get('groupName', '?')})"
            if lo > hi:
                problems.append(f"{gw}: minReplicas {lo} > maxReplicas {hi}")
            if n is not None and not lo <= n <= hi:
                problems.append(f"{gw}: replicas {n} outside [minReplicas {lo}, maxReplicas {hi}]")
    for where, schedule in _schedules(doc):
        problem = check_cron(schedule)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _schedules(doc: dict[str, Any]) -> list[tuple[str, str]]:
    spec = doc.get("spec") or {}
    if doc.get("kind") in ("RayCronJob", "CronJob") and "schedule" in spec:
        return [("spec.schedule", spec["schedule"])]
    return []


def check_cron(expr: Any) -> str | None:
    """None if ``expr`` is a valid 5-field cron expression (or @daily-style macro), else the reason."""
    from croniter import croniter

    if not isinstance(expr, str):
        return f"schedule must be a string, got {type(expr).__name__}"
    if expr.startswith("@"):
        ok = expr in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
        return None if ok else f"unknown schedule macro '{expr}'"
    if len(expr.split()) != 5:
        return f"schedule '{expr}' must have 5 fields (minute hour day-of-month month day-of-week)"
    return None if croniter.is_valid(expr) else f"schedule '{expr}' is not a valid cron expression"


def check_project_rules(doc: dict[str, Any]) -> list[str]:
    """dynagen's own conventions (STYLE.md): rayVersion pinned to the image tag, head takes no work, GPU groups
    scale from zero, S3 credentials only from Secrets, Ray token auth on."""
    problems = []
    for where, cluster in _cluster_specs(doc):
        version = cluster.get("rayVersion")
        head = cluster.get("headGroupSpec") or {}
        groups = [("headGroupSpec", head)] + [
            (f"workerGroupSpecs[{i}]", g) for i, g in enumerate(cluster.get("workerGroupSpecs") or [])]
        for gname, g in groups:
            for c in _containers(g):
                m = RAY_TAG.search(c.get("image", "").rsplit(":", 1)[-1])
                if m and m.group(1) != version:
                    problems.append(
                        f"{where}.{gname}: image {c['image']} is Ray {m.group(1)} but rayVersion is {version}")
                if not m:
                    problems.append(f"{where}.{gname}: image {c.get('image')} has no Ray version in its tag")
                gpus = ((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
                if gpus and gname != "headGroupSpec" and g.get("minReplicas", 0) != 0:
                    problems.append(f"{where}.{gname}: GPU worker group must have minReplicas 0 (scale from zero)")
        if (head.get("rayStartParams") or {}).get("num-cpus") != "0":
            problems.append(f"{where}.headGroupSpec.rayStartParams: num-cpus must be \"0\" (no work on the head)")
        if (cluster.get("authOptions") or {}).get("mode") != "token":
            problems.append(f"{where}.authOptions.mode: must be 'token' (Ray token auth on)")
    for path, env in _env_vars(doc):
        if env.get("name", "").startswith("AWS_") and ("KEY" in env["name"] or "TOKEN" in env["name"]):
            if "value" in env or "secretKeyRef" not in (env.get("valueFrom") or {}):
                problems.append(f"{path}: {env['name']} must come from a Secret (valueFrom.secretKeyRef)")
    return problems


def _env_vars(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                for i, e in enumerate(v):
                    if isinstance(e, dict):
                        yield f"{path}.env[{i}]".lstrip("."), e
            else:
                yield from _env_vars(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _env_vars(v, f"{path}[{i}]")


def validate_docs(docs: list[tuple[str, dict[str, Any]]], crds, project_rules: bool = True) -> list[Problem]:
    import yaml

    problems: list[Problem] = []
    for where, doc in docs:
        if not isinstance(doc, dict):
            problems.append(Problem(where, "not a mapping"))
            continue
        label = f"{where} ({doc.get('kind', '?')} {(doc.get('metadata') or {}).get('name', '?')})"
        msgs = check_schema(doc, crds) + check_operator_rules(doc)
        if project_rules:
            msgs += check_project_rules(doc)
        problems += [Problem(label, m) for m in msgs]
        if doc.get("kind") == "ConfigMap":  # manifests shipped inside a ConfigMap (applied by a Job/CronJob)
            for key, text in (doc.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    try:
                        inner = [d for d in yaml.safe_load_all(text) if d]
                    except yaml.YAMLError as e:
                        problems.append(Problem(f"{label} data.{key}", f"invalid YAML: {str(e).splitlines()[0]}"))
                        continue
                    if all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in inner):
                        problems += validate_docs([(f"{label} data.{key}#{i}", d) for i, d in enumerate(inner)],
                                                  crds, project_rules)
    return problems


def validate_file(path: str | Path, crds, project_rules: bool = True) -> list[Problem]:
    """Every problem in every document of a YAML file (empty list = valid)."""
    import yaml

    path = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        return [Problem(str(path), f"invalid YAML: {str(e).splitlines()[0]}")]
    if not docs:
        return [Problem(str(path), "no documents")]
    return validate_docs([(f"{path.name}#{i}", d) for i, d in enumerate(docs)], crds, project_rules)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crds", required=True, help="folder of KubeRay CRD YAMLs (e.g. ../shared/kuberay/crds)")
    p.add_argument("--no-project-rules", action="store_true", help="schema and operator rules only")
    p.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    crds = load_crds(a.crds)
    bad = 0
    for f in a.files:
        problems = validate_file(f, crds, not a.no_project_rules)
        bad += bool(problems)
        print(f"{'ok  ' if not problems else 'FAIL'} {f}")
        for prob in problems:
            print(f"     {prob}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
