#!/usr/bin/env python3
"""Offline checks of the sentinel Helm chart and container image recipe.

Renders the chart with `helm template` (default values, and every optional feature on) for the
oldest Kubernetes version the chart declares and the newest one kubernetes-validate knows, then:
  - validates every rendered object against the Kubernetes OpenAPI schema in strict mode
    (unknown fields rejected). A kind without a schema fails, except the CRDs listed in
    CRD_SHAPES, which get a hand-written strict check of the fields this chart renders;
  - asserts what the chart promises (gRPC probes, restricted security, the database URL only from
    the Secret, migration hook, image tags, selectors that match, ...);
  - checks that bad values fail rendering with a clear message;
  - checks values.schema.json itself and the Dockerfile's workspace manifest list.

Usage: check_chart.py HELM_BINARY. Prints one line per failed check and ends with
"N passed, N failed"; exits 1 when anything failed.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import yaml

DEPLOY = Path(__file__).resolve().parent.parent
ROOT = DEPLOY.parent
CHART = DEPLOY / "helm" / "sentinel"
ALL_FEATURES = DEPLOY / "tests" / "values-all-features.yaml"
MINIMAL = DEPLOY / "tests" / "values-minimal.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

RELEASE = "prod"
NAMESPACE = "sentinel-system"
FULLNAME = f"{RELEASE}-sentinel"
SECRET = "sentinel-db"
SECRET_ARGS = ["--set", f"database.existingSecret={SECRET}"]

GRPC_PORT = 50051
METRICS_PORT = 9090
SERVICE_NAME = "sentinel.v1.SentinelService"

# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


Doc = dict[str, Any]


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}")
        return ok


R = Report()


# ---------------------------------------------------------------- rendering


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


def render(kube_version: str, *args: str) -> subprocess.CompletedProcess[str]:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version, *args)


def parse(manifest: str) -> list[tuple[str, Doc]]:
    """Splits `helm template` output into (source template, object) pairs."""
    docs = []
    for chunk in re.split(r"(?m)^---\s*$", manifest):
        source = re.search(r"(?m)^# Source: (\S+)", chunk)
        obj = yaml.safe_load(chunk)
        if obj:
            docs.append((source.group(1) if source else "?", obj))
    return docs


def render_docs(kube_version: str, *args: str) -> tuple[str, list[tuple[str, Doc]]]:
    out = render(kube_version, *args)
    if not R.check(out.returncode == 0, f"helm template {' '.join(args)} failed: {out.stderr.strip()}"):
        return "", []
    return out.stdout, parse(out.stdout)


def find(docs: list[tuple[str, Doc]], kind: str, name: str | None = None) -> list[Doc]:
    return [d for _, d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[tuple[str, Doc]], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    R.check(len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}")
    return found[0] if found else {}


def dig(obj: Any, *path: Any, default: Any = None) -> Any:
    for step in path:
        try:
            obj = obj[step]
        except (KeyError, IndexError, TypeError):
            return default
    return obj


# ---------------------------------------------------------------- schema validation


def servicemonitor_schema() -> Doc:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor that this chart renders, strict.

    Hand-written from the prometheus-operator CRD: no schema for it ships with
    kubernetes-validate, and a subset that rejects unknown fields still catches typos."""
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    label_selector = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"matchLabels": string_map, "matchExpressions": {"type": "array"}},
    }
    duration = {
        "type": "string",
        "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": string_map,
                    "annotations": string_map,
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "selector": label_selector,
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                                "interval": duration,
                                "scrapeTimeout": duration,
                                "honorLabels": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    }


# CRDs whose schema kubernetes-validate lacks, checked by a hand-written subset instead.
CRD_SHAPES: dict[tuple[str, str], Callable[[], Doc]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): servicemonitor_schema,
}


def validate_all(label: str, docs: list[tuple[str, Doc]], kube_version: str) -> None:
    for source, doc in docs:
        ident = f"{label} k8s {kube_version}: {doc.get('kind')}/{dig(doc, 'metadata', 'name')} ({source})"
        shape = CRD_SHAPES.get((doc.get("apiVersion"), doc.get("kind")))
        if shape is not None:
            errors = sorted(jsonschema.Draft7Validator(shape()).iter_errors(doc), key=str)
            R.check(not errors, f"{ident}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors))
            continue
        try:
            kv.validate(doc, kube_version, strict=True)
            R.check(True, ident)
        except kv.ValidationError as e:
            R.check(False, f"{ident}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError as e:
            # Never pass silently: a kind nobody validates is a failure until it is added above.
            R.check(False, f"{ident}: {e.message}")


# ---------------------------------------------------------------- assertions


def pod_specs(docs: list[tuple[str, Doc]]) -> list[tuple[str, Doc]]:
    specs = []
    for _, d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Pod":
            specs.append((name, d["spec"]))
        elif d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            specs.append((name, d["spec"]["template"]["spec"]))
    return specs


def check_restricted(name: str, spec: Doc) -> None:
    """The restricted Pod Security Standard, plus a read-only root filesystem."""
    pod_sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        R.check(not spec.get(key), f"{name}: {key} must be off")
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        R.check(kinds <= RESTRICTED_VOLUMES, f"{name}: volume {vol['name']} of type {kinds} is not allowed")
    containers = (spec.get("initContainers") or []) + spec["containers"]
    for c in containers:
        cname = f"{name} container {c['name']}"
        sc = c.get("securityContext") or {}

        def effective(key: str, sc: Doc = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        R.check(effective("runAsNonRoot") is True, f"{cname}: runAsNonRoot must be true")
        R.check(effective("runAsUser") not in (0, "0"), f"{cname}: runAsUser must not be 0")
        R.check(
            isinstance(effective("runAsUser"), int),
            f"{cname}: runAsUser must be numeric so the kubelet can verify runAsNonRoot",
        )
        seccomp = dig(sc, "seccompProfile", "type") or dig(pod_sc, "seccompProfile", "type")
        R.check(seccomp == "RuntimeDefault", f"{cname}: seccompProfile must be RuntimeDefault, is {seccomp}")
        R.check(sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation must be false")
        R.check(sc.get("privileged") in (None, False), f"{cname}: must not be privileged")
        R.check(sc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem must be true")
        R.check(dig(sc, "capabilities", "drop") == ["ALL"], f"{cname}: capabilities must drop ALL")
        R.check(
            set(dig(sc, "capabilities", "add", default=[]) or []) <= {"NET_BIND_SERVICE"}, f"{cname}: adds capabilities"
        )
        for port in c.get("ports") or []:
            R.check("hostPort" not in port, f"{cname}: hostPort is not allowed")
        R.check("resources" in c and c["resources"].get("requests"), f"{cname}: needs resource requests")


def check_images(label: str, docs: list[tuple[str, Doc]]) -> None:
    for name, spec in pod_specs(docs):
        for c in spec["containers"]:
            image = c["image"]
            tagged = re.fullmatch(r"[^@\s]+:([A-Za-z0-9_][A-Za-z0-9_.-]*)", image)
            digested = re.fullmatch(r"[^@\s]+@sha256:[a-f0-9]{64}", image)
            R.check(bool(tagged or digested), f"{label} {name}: image {image} has no explicit tag or digest")
            R.check(not (tagged and tagged.group(1) == "latest"), f"{label} {name}: image {image} uses latest")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def configmap_env(docs: list[tuple[str, Doc]]) -> dict[str, str]:
    return one(docs, "ConfigMap", FULLNAME).get("data") or {}


def check_default(manifest: str, docs: list[tuple[str, Doc]]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    kinds = sorted(d["kind"] for _, d in docs)
    R.check(
        kinds
        == sorted(
            ["ConfigMap", "ConfigMap", "Deployment", "Job", "Pod", "PodDisruptionBudget", "Service", "ServiceAccount"]
        ),
        f"default render has unexpected kinds {kinds}",
    )
    for kind in ("HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"):
        R.check(not find(docs, kind), f"{kind} must be off by default")

    dep = one(docs, "Deployment", FULLNAME)
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    R.check(dep["spec"].get("replicas") == 2, "default replicas must be 2")
    R.check(c.get("args") == ["serve"], f"server args must be [serve], are {c.get('args')}")
    R.check(
        c["image"] == f"ghcr.io/sentinel-dev/sentinel:{chart['appVersion']}",
        f"default image must be ghcr.io/sentinel-dev/sentinel:<appVersion>, is {c['image']}",
    )
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    R.check(ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}, f"container ports {ports}")

    # Probes: native gRPC on the gRPC port, nothing else.
    for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = c.get(probe_name)
        if not R.check(probe is not None, f"{probe_name} missing"):
            continue
        R.check(not {"httpGet", "tcpSocket", "exec"} & set(probe), f"{probe_name} must use grpc only")
        R.check(dig(probe, "grpc", "port") == GRPC_PORT, f"{probe_name} must be grpc on {GRPC_PORT}")
    R.check(
        dig(c, "readinessProbe", "grpc", "service") == SERVICE_NAME,
        f"readiness must ask for {SERVICE_NAME}, so a draining pod leaves the Service",
    )
    R.check(dig(c, "livenessProbe", "grpc", "service") == "", 'liveness must ask for the server ("")')

    # Drain: the kubelet must not kill a pod before preStop and the drain are over.
    env = configmap_env(docs)
    drain = int(env.get("SENTINEL_DRAIN_TIMEOUT", "0s").rstrip("s"))
    pre_stop = dig(c, "lifecycle", "preStop", "sleep", "seconds", default=0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    R.check(drain > 0, "SENTINEL_DRAIN_TIMEOUT must be set")
    R.check(
        grace > drain + pre_stop,
        f"terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + drain {drain}",
    )
    live = c["livenessProbe"]
    R.check(live["periodSeconds"] * live["failureThreshold"] > drain, "liveness budget must exceed the drain timeout")

    # Settings: ConfigMap through envFrom, with a checksum that rolls the pods.
    R.check(dig(c, "envFrom", 0, "configMapRef", "name") == FULLNAME, "server must read the ConfigMap by envFrom")
    R.check(env.get("SENTINEL_LISTEN") == f"0.0.0.0:{GRPC_PORT}", f"SENTINEL_LISTEN is {env.get('SENTINEL_LISTEN')}")
    R.check(env.get("SENTINEL_METRICS_LISTEN") == f"0.0.0.0:{METRICS_PORT}", "SENTINEL_METRICS_LISTEN")
    for key in ("SENTINEL_POOL_SIZE", "SENTINEL_LOG_FORMAT", "RUST_LOG", "SENTINEL_RETENTION_DEFAULT"):
        R.check(key in env, f"ConfigMap lacks {key}")
    R.check(all(isinstance(v, str) for v in env.values()), "ConfigMap values must all be strings")
    R.check("SENTINEL_DATABASE_URL" not in env, "the database URL must not be in the ConfigMap")
    cm_text = re.search(r"(?ms)^# Source: sentinel/templates/configmap\.yaml\n(.*?)(?=^---|\Z)", manifest)
    checksum = dig(pod, "metadata", "annotations", "checksum/config")
    if R.check(cm_text is not None and checksum is not None, "checksum/config annotation or ConfigMap missing"):
        R.check(
            checksum == hashlib.sha256((cm_text.group(1).strip() + "\n").encode()).hexdigest(),
            "checksum/config must be the sha256 of the rendered ConfigMap",
        )

    # The database URL only from the existing Secret, in the server and in the migration Job.
    job = one(docs, "Job", f"{FULLNAME}-migrate")
    for name, container in (("server", c), ("migration", dig(job, "spec", "template", "spec", "containers", 0))):
        url = [e for e in container.get("env") or [] if e["name"] == "SENTINEL_DATABASE_URL"]
        R.check(
            len(url) == 1
            and "value" not in url[0]
            and dig(url[0], "valueFrom", "secretKeyRef") == {"name": SECRET, "key": "url"},
            f"{name}: SENTINEL_DATABASE_URL must come from secret {SECRET} key url, is {url}",
        )
    R.check(not find(docs, "Secret"), "the chart must not create a Secret")

    # Migration Job: a pre-install/pre-upgrade hook that needs nothing else from the chart.
    ann = job["metadata"].get("annotations") or {}
    R.check(
        set(ann.get("helm.sh/hook", "").split(",")) == {"pre-install", "pre-upgrade"},
        f"migration hook annotation is {ann.get('helm.sh/hook')}",
    )
    R.check(
        "before-hook-creation" in ann.get("helm.sh/hook-delete-policy", ""),
        "migration Job must be replaced on the next run (before-hook-creation)",
    )
    jspec = job["spec"]["template"]["spec"]
    R.check(dig(jspec, "containers", 0, "args") == ["migrate"], "migration Job must run `sentinel migrate`")
    R.check(dig(jspec, "containers", 0, "image") == c["image"], "migration Job must use the server image")
    R.check(jspec.get("restartPolicy") == "Never", "migration Job restartPolicy must be Never")
    R.check(
        jspec.get("serviceAccountName") in (None, "default"),
        "pre-install Job must not use the chart's ServiceAccount (it does not exist yet)",
    )
    R.check("envFrom" not in jspec["containers"][0], "pre-install Job must not read the chart's ConfigMap")

    # Service and selectors.
    svc = one(docs, "Service", FULLNAME)
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    R.check(
        dig(sports, "grpc", "port") == GRPC_PORT
        and dig(sports, "grpc", "appProtocol") == "grpc"
        and dig(sports, "grpc", "targetPort") == "grpc",
        f"Service grpc port {sports.get('grpc')}",
    )
    R.check(dig(sports, "metrics", "port") == METRICS_PORT, f"Service metrics port {sports.get('metrics')}")
    pod_labels = pod["metadata"]["labels"]
    R.check(selects(svc["spec"]["selector"], pod_labels), "Service must select the server pods")
    R.check(
        dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"], "Service and Deployment selectors differ"
    )
    others = [job["spec"]["template"]["metadata"]["labels"], one(docs, "Pod")["metadata"]["labels"]]
    R.check(
        not any(selects(svc["spec"]["selector"], lbl) for lbl in others),
        "Service must not select the migration or test pods",
    )
    pdb = one(docs, "PodDisruptionBudget")
    R.check(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB must select the server pods")
    R.check(pdb["spec"].get("maxUnavailable") == 1, "default PDB must allow one pod down")
    sa = one(docs, "ServiceAccount")
    R.check(spec.get("serviceAccountName") == sa["metadata"]["name"], "Deployment must use the chart's ServiceAccount")
    R.check(spec.get("automountServiceAccountToken") is False, "server needs no API token")

    # helm test: a hook pod that runs the shipped script against the Service.
    test_pod = one(docs, "Pod")
    test_cm = one(docs, "ConfigMap", f"{FULLNAME}-test")
    R.check(dig(test_pod, "metadata", "annotations", "helm.sh/hook") == "test", "test pod must be a test hook")
    R.check(dig(test_cm, "metadata", "annotations", "helm.sh/hook") == "test", "test ConfigMap must be a test hook")
    R.check(
        int(dig(test_cm, "metadata", "annotations", "helm.sh/hook-weight"))
        < int(dig(test_pod, "metadata", "annotations", "helm.sh/hook-weight")),
        "test ConfigMap must be created before the test pod",
    )
    script = (CHART / "files" / "claim-complete.sh").read_text()
    R.check(
        dig(test_cm, "data", "claim-complete.sh", default="").strip() == script.strip(),
        "test ConfigMap must hold files/claim-complete.sh unchanged",
    )
    tenv = {e["name"]: e.get("value") for e in test_pod["spec"]["containers"][0]["env"]}
    R.check(
        tenv.get("SENTINEL_ADDR") == f"{FULLNAME}.{NAMESPACE}.svc:{GRPC_PORT}",
        f"test pod must dial the Service, dials {tenv.get('SENTINEL_ADDR')}",
    )
    for rpc in ("sentinel.v1.SentinelService/$1", "Claim", "Complete"):
        R.check(rpc in script, f"test script must call {rpc}")

    for name, pspec in pod_specs(docs):
        check_restricted(name, pspec)
    check_images("default", docs)


def check_all_features(docs: list[tuple[str, Doc]]) -> None:
    values = yaml.safe_load(ALL_FEATURES.read_text())
    dep = one(docs, "Deployment", FULLNAME)
    spec = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    c = spec["containers"][0]
    R.check("replicas" not in dep["spec"], "with autoscaling the Deployment must leave replicas to the HPA")
    R.check(c["image"] == f"ghcr.io/sentinel-dev/sentinel@{values['image']['digest']}", f"digest image is {c['image']}")
    R.check(spec.get("terminationGracePeriodSeconds") == 60, "explicit terminationGracePeriodSeconds")
    env_names = [e["name"] for e in c["env"]]
    R.check(
        {"SENTINEL_DATABASE_URL", "EXTRA_FROM_SECRET", "OTEL_RESOURCE_ATTRIBUTES"} <= set(env_names),
        f"server env {env_names}",
    )
    R.check(
        dig(c, "env", 0, "valueFrom", "secretKeyRef") == {"name": "sentinel-db", "key": "database-url"},
        "database secret name and key from values",
    )
    cm = configmap_env(docs)
    R.check(
        cm.get("SENTINEL_RETENTION_MAX") == "168h"
        and cm.get("SENTINEL_POOL_SIZE") == "24"
        and cm.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://otel-collector.observability:4317"
        and cm.get("SENTINEL_EXAMPLE_FLAG") == "on",
        f"ConfigMap {cm}",
    )

    hpa = one(docs, "HorizontalPodAutoscaler")
    R.check(hpa.get("apiVersion") == "autoscaling/v2", "HPA must be autoscaling/v2")
    R.check(
        dig(hpa, "spec", "scaleTargetRef") == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME},
        "HPA must target the Deployment",
    )
    R.check((dig(hpa, "spec", "minReplicas"), dig(hpa, "spec", "maxReplicas")) == (3, 12), "HPA bounds")
    R.check({m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}, "HPA metrics")

    pdb = one(docs, "PodDisruptionBudget")
    R.check(
        pdb.get("apiVersion") == "policy/v1"
        and pdb["spec"].get("minAvailable") == 2
        and "maxUnavailable" not in pdb["spec"],
        f"PDB spec {pdb.get('spec')}",
    )

    svc = one(docs, "Service", FULLNAME)
    headless = one(docs, "Service", f"{FULLNAME}-headless")
    R.check(dig(headless, "spec", "clusterIP") == "None", "headless Service must have clusterIP None")
    R.check(selects(dig(headless, "spec", "selector", default={"x": "y"}), pod_labels), "headless Service selector")

    sm = one(docs, "ServiceMonitor")
    R.check(dig(sm, "metadata", "namespace") == "monitoring", "ServiceMonitor namespace from values")
    R.check(dig(sm, "metadata", "labels", "release") == "kube-prometheus-stack", "ServiceMonitor labels from values")
    R.check(
        selects(dig(sm, "spec", "selector", "matchLabels", default={"x": "y"}), svc["metadata"]["labels"]),
        "ServiceMonitor must select the Service",
    )
    R.check(
        dig(sm, "spec", "namespaceSelector", "matchNames") == [NAMESPACE],
        "ServiceMonitor must look in the release namespace",
    )
    svc_port_names = {p["name"] for p in svc["spec"]["ports"]}
    R.check(
        {e["port"] for e in sm["spec"]["endpoints"]} <= svc_port_names,
        "ServiceMonitor endpoints must name Service ports",
    )

    np = one(docs, "NetworkPolicy")
    R.check(selects(np["spec"]["podSelector"]["matchLabels"], pod_labels), "NetworkPolicy must select the server pods")
    R.check(set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "NetworkPolicy policyTypes")
    grpc_rule = [r for r in np["spec"]["ingress"] if any(p["port"] == "grpc" for p in r["ports"])]
    test_labels = one(docs, "Pod")["metadata"]["labels"]
    R.check(
        len(grpc_rule) == 1
        and any(
            selects(dig(peer, "podSelector", "matchLabels", default={"x": "y"}), test_labels)
            for peer in grpc_rule[0].get("from", [])
        ),
        "NetworkPolicy must let the helm test pod reach gRPC",
    )
    egress_ports = {p["port"] for r in np["spec"]["egress"] for p in r.get("ports", [])}
    R.check({53, 5432, 4317} <= egress_ports, f"NetworkPolicy egress ports {egress_ports}")

    for name, pspec in pod_specs(docs):
        check_restricted(name, pspec)
        R.check(dig(pspec, "imagePullSecrets") == [{"name": "ghcr-pull"}], f"{name}: imagePullSecrets")
    check_images("all-features", docs)


def check_minimal(docs: list[tuple[str, Doc]]) -> None:
    kinds = sorted(d["kind"] for _, d in docs)
    R.check(kinds == ["ConfigMap", "ConfigMap", "Deployment", "Pod", "Service"], f"minimal render has kinds {kinds}")
    dep = one(docs, "Deployment", FULLNAME)
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    R.check(
        dep["spec"]["strategy"] == {"type": "Recreate"}, f"Recreate strategy renders alone: {dep['spec']['strategy']}"
    )
    R.check(spec.get("serviceAccountName") == "default", "without a chart ServiceAccount the pods use default")
    R.check("lifecycle" not in c and "startupProbe" not in c, "preStop and startup probe off")
    R.check([p["name"] for p in c["ports"]] == ["grpc"], "no metrics port when metrics are off")
    R.check([p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["grpc"], "Service without metrics port")
    R.check(spec.get("terminationGracePeriodSeconds") == 25, "grace period is drain + 10 without preStop")
    env = configmap_env(docs)
    R.check("SENTINEL_METRICS_LISTEN" not in env, "no metrics listener when metrics are off")
    R.check(env.get("SENTINEL_LISTEN") == f"[::]:{GRPC_PORT}", f"IPv6 listen address, is {env.get('SENTINEL_LISTEN')}")
    R.check(env.get("SENTINEL_LOG_FORMAT") == "text", "config.extraEnv replaces a chart-set variable")
    for name, pspec in pod_specs(docs):
        check_restricted(name, pspec)


def check_failures(kube_version: str) -> None:
    """Bad values must stop rendering with a message that says what to do."""
    cases = [
        ([], "database.existingSecret is required"),
        (SECRET_ARGS + ["--set", "replicas=3"], "replicas"),
        (SECRET_ARGS + ["--set", "config.logFormat=xml"], "logFormat"),
        (SECRET_ARGS + ["--set", "config.retentionDefault=one day"], "retentionDefault"),
        (SECRET_ARGS + ["--set", "image.digest=latest"], "digest"),
        (SECRET_ARGS + ["--set", "terminationGracePeriodSeconds=20"], "must be larger than"),
        (
            SECRET_ARGS + ["--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.enabled",
        ),
        (SECRET_ARGS + ["--set", "probes.liveness.failureThreshold=1"], "must exceed config.drainTimeoutSeconds"),
        (
            SECRET_ARGS
            + [
                "--set",
                "autoscaling.enabled=true",
                "--set",
                "autoscaling.minReplicas=5",
                "--set",
                "autoscaling.maxReplicas=3",
            ],
            "maxReplicas must be at least",
        ),
        (SECRET_ARGS + ["--set", "tests.namespace=Bad Namespace"], "namespace"),
        (
            SECRET_ARGS
            + ["--set", "autoscaling.enabled=true", "--set", "autoscaling.targetCPUUtilizationPercentage=null"],
            "needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage",
        ),
    ]
    for args, message in cases:
        out = render(kube_version, *args)
        R.check(
            out.returncode != 0 and message in out.stderr,
            f"rendering with {args} must fail mentioning {message!r}; rc={out.returncode} stderr={out.stderr.strip()[:300]}",
        )
    too_old = render("1.29.0", *SECRET_ARGS)
    R.check(
        too_old.returncode != 0 and "kubeVersion" in too_old.stderr,
        "rendering for Kubernetes 1.29 must fail on the chart's kubeVersion",
    )

    # checksum/config follows the ConfigMap and nothing else.
    def checksum(*args: str) -> str | None:
        docs = parse(render(kube_version, *SECRET_ARGS, *args).stdout)
        deps = find(docs, "Deployment")
        return dig(deps, 0, "spec", "template", "metadata", "annotations", "checksum/config")

    plain, other_setting, other_replicas = (
        checksum(),
        checksum("--set", "config.rustLog=debug"),
        checksum("--set", "replicaCount=3"),
    )
    R.check(plain is not None and plain != other_setting, "a settings change must change checksum/config")
    R.check(plain == other_replicas, "a change outside the ConfigMap must keep checksum/config")


def check_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for label, values in (
        ("values.yaml", defaults),
        ("all-features", merge(defaults, yaml.safe_load(ALL_FEATURES.read_text()))),
    ):
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(values))
        R.check(not errors, f"{label} does not match values.schema.json: {[e.message for e in errors]}")
    R.check(defaults["image"]["tag"] in ("", None), "image.tag must default to the chart's appVersion")

    # Strictness: every object that lists its properties must close them.
    open_on_purpose = {"properties.extraEnv.items"}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and path not in open_on_purpose:
                R.check(
                    node.get("additionalProperties") is False,
                    f"schema {path or '/'} must set additionalProperties: false",
                )
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]")

    walk(schema, "")


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(base.get(k), v)
        return out
    return override


def check_dockerfile() -> None:
    """What `cargo fetch` and `cargo build` in the image need: every workspace member in the
    build context, the dependency download before the sources, and the runtime contract."""
    text = DOCKERFILE.read_text()
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    # The ignore file uses plain names and "**/name" only, so this simple reading of it is exact.
    excluded = [
        line.strip()
        for line in (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    R.check(
        all(re.fullmatch(r"(\*\*/)?[A-Za-z0-9_.-]+", p) for p in excluded),
        f"Dockerfile.dockerignore must hold only NAME or **/NAME patterns, has {excluded}",
    )
    for member in ["Cargo.toml", "Cargo.lock", *members]:
        parts = member.split("/")
        hit = [
            p
            for p in excluded
            if (p.startswith("**/") and p[3:] in parts) or (not p.startswith("**/") and p == parts[0])
        ]
        R.check(not hit, f"Dockerfile.dockerignore must not leave out workspace member {member} (by {hit})")
    builder = text[text.find(" AS builder") :]
    fetch_at = builder.find("cargo fetch --locked")
    R.check(0 <= fetch_at < builder.find("COPY . ."), "the builder must run cargo fetch before copying the sources")
    R.check("COPY --from=manifests" in builder, "the builder must start from the manifests stage")
    R.check(re.search(r'(?m)^ENTRYPOINT \["sentinel"\]$', text) is not None, 'ENTRYPOINT ["sentinel"]')
    R.check(re.search(r'(?m)^CMD \["serve"\]$', text) is not None, 'CMD ["serve"]')
    R.check(re.search(r"(?m)^USER [0-9]+(:[0-9]+)?$", text) is not None, "USER must be numeric")
    R.check(re.search(r"(?m)^EXPOSE 50051 9090$", text) is not None, "EXPOSE 50051 9090")


def main() -> int:
    versions_wanted = re.fullmatch(
        r">=\s*(\d+\.\d+)\.\d+(-0)?", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    )
    if versions_wanted is None:
        print("FAIL: Chart.yaml kubeVersion must read >=X.Y.Z-0")
        return 1
    # The oldest Kubernetes the chart accepts and the newest kubernetes-validate has schemas for.
    newest = ".".join((kv.latest_version().split(".") + ["0", "0"])[:3])
    kube_versions = [f"{versions_wanted.group(1)}.0", newest]
    print(f"kubernetes-validate schemas: {kube_versions}")

    for kube_version in kube_versions:
        manifest, docs = render_docs(kube_version, *SECRET_ARGS)
        validate_all("default", docs, kube_version)
        _, all_docs = render_docs(kube_version, "-f", str(ALL_FEATURES))
        validate_all("all-features", all_docs, kube_version)
        _, minimal_docs = render_docs(kube_version, "-f", str(MINIMAL))
        validate_all("minimal", minimal_docs, kube_version)
        if kube_version == kube_versions[-1] and docs and all_docs:
            check_default(manifest, docs)
            check_all_features(all_docs)
            R.check(len(all_docs) > len(docs), "all-features render must add objects")
            if minimal_docs:
                check_minimal(minimal_docs)
    check_failures(kube_versions[-1])
    check_values_schema()
    check_dockerfile()

    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: check_chart.py HELM_BINARY")
    HELM = sys.argv[1]
    sys.exit(main())
