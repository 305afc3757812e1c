"""Offline checks of deploy/: the image recipe and the Kubernetes manifests.

Every kustomization (the base and each overlay) is rendered with `kubectl kustomize`, and each
object is validated against the Kubernetes JSON schemas that kubernetes-validate ships (strict:
an unknown field is an error), the CRDs against the schemas below. The other tests cross-check
the manifests with the worker itself: health port and paths, drain time, setting names, the
queue KEDA watches, the image's user and commands, the metric names. checkov scans the rendered
production overlay and the Dockerfile, and every finding must be justified in deploy/README.md.
No cluster, no Docker, no network.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from worker.metrics import Metrics
from worker.ops.cli import app as cli_app
from worker.profiles.load import load_profiles
from worker.settings import SECRETS_DIR_VARIABLE, Settings, Topology
from worker.webhooks.receiver import WebhookMetrics

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "deploy" / "kustomize"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
# One recent release; kubernetes-validate carries its schemas in the package.
KUBERNETES_VERSION = "1.33"
# After the drain the outbox relay makes a last pass and the connections close.
SHUTDOWN_HEADROOM_S = 10
LIVENESS_PATH, READINESS_PATH, METRICS_PATH = "/livez", "/readyz", "/metrics"
CONSOLE_SCRIPT = IMAGE_NAME = "assistant-worker"

Obj = dict[str, Any]


def _targets() -> dict[str, Path]:
    found = {"base": KUSTOMIZE / "base"}
    for overlay in sorted((KUSTOMIZE / "overlays").iterdir()):
        if (overlay / "kustomization.yaml").is_file():
            found[overlay.name] = overlay
    return found


TARGETS = _targets()
OVERLAYS = [name for name in TARGETS if name != "base"]


@cache
def render(target: str) -> tuple[Obj, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not on PATH: these tests render deploy/kustomize with "
            "`kubectl kustomize` (kubectl 1.27 or newer; no cluster needed)",
            pytrace=False,
        )
    proc = subprocess.run(
        [kubectl, "kustomize", str(TARGETS[target])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {TARGETS[target]} failed:\n{proc.stderr}", pytrace=False)
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def of_kind(target: str, kind: str) -> list[Obj]:
    return [o for o in render(target) if o["kind"] == kind]


def labels(obj: Obj) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {})


def component(obj: Obj) -> str | None:
    return labels(obj).get("app.kubernetes.io/component")


def worker_deployment(target: str) -> Obj:
    found = [d for d in of_kind(target, "Deployment") if component(d) == "worker"]
    assert len(found) == 1, f"{target}: expected one worker Deployment, found {len(found)}"
    return found[0]


def worker_container(target: str) -> Obj:
    containers = worker_deployment(target)["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c.get("args", [None])[0] == "run"]
    assert len(found) == 1, f"{target}: expected one container running `assistant-worker run`"
    return dict(found[0])


def migrate_job(target: str) -> Obj:
    found = [j for j in of_kind(target, "Job") if component(j) == "migrations"]
    assert len(found) == 1, f"{target}: expected one migrations Job, found {len(found)}"
    return found[0]


def config(target: str) -> dict[str, str]:
    """What the worker container gets from ConfigMaps (envFrom), in order."""
    maps = {m["metadata"]["name"]: m.get("data") or {} for m in of_kind(target, "ConfigMap")}
    data: dict[str, str] = {}
    for source in worker_container(target).get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in maps, f"{target}: ConfigMap {name} is referenced but not rendered"
            data.update(maps[name])
    return data


def worker_env(target: str) -> dict[str, str]:
    """The worker container's environment: its ConfigMaps, then its inline values."""
    inline = {
        e["name"]: e["value"] for e in worker_container(target).get("env", []) if "value" in e
    }
    return {**config(target), **inline}


def effective(target: str, field: str) -> str:
    """A worker setting as the rendered manifests set it, else the code's default."""
    model: type[BaseSettings] = Topology if field in Topology.model_fields else Settings
    default = model.model_fields[field].default
    return worker_env(target).get(f"AW_{field.upper()}", str(default))


def pod_specs(target: str) -> Iterator[tuple[str, Obj]]:
    for obj in render(target):
        spec = obj.get("spec") or {}
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        template = spec.get("template") if isinstance(spec, dict) else None
        if isinstance(template, dict) and "containers" in template.get("spec", {}):
            yield f"{obj['kind']}/{obj['metadata']['name']}", template["spec"]


def all_containers(pod: Obj) -> list[Obj]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def container_port(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    pytest.fail(f"container {container['name']} has no port named {port!r}")


def selects(selector: dict[str, str], candidate: dict[str, str]) -> bool:
    return all(candidate.get(key) == value for key, value in selector.items())


def pod_labels(obj: Obj) -> dict[str, str]:
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return dict(spec["template"]["metadata"].get("labels") or {})


def prune_cronjob(target: str) -> Obj:
    found = [j for j in of_kind(target, "CronJob") if component(j) == "prune"]
    assert len(found) == 1, f"{target}: expected one prune CronJob, found {len(found)}"
    return found[0]


def health_port(target: str) -> int:
    return int(effective(target, "health_port"))


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A file a container finds in AW_SECRETS_DIR: which Secret and key it holds."""

    secret: str
    key: str
    optional: bool
    mode: int


@dataclass(frozen=True, slots=True)
class SecretVolume:
    """A volume of Secret keys (secret, or projected from secrets), and the files it holds."""

    name: str
    files: dict[str, SecretFile]  # by path
    whole: bool  # a Secret without `items`: every key, present or future


def secret_volumes(pod: Obj) -> list[SecretVolume]:
    found = []
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            default = volume["secret"].get("defaultMode", 0o644)
            sources = [(volume["secret"]["secretName"], volume["secret"])]
        elif "projected" in volume:
            default = volume["projected"].get("defaultMode", 0o644)
            sources = [
                (s["secret"]["name"], s["secret"])
                for s in volume["projected"]["sources"]
                if "secret" in s
            ]
        else:
            continue
        files = {
            item["path"]: SecretFile(
                name, item["key"], source.get("optional", False), item.get("mode", default)
            )
            for name, source in sources
            for item in source.get("items", [])
        }
        whole = any("items" not in source for _, source in sources)
        found.append(SecretVolume(volume["name"], files, whole))
    return found


def secrets_dir(container: Obj) -> str | None:
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return env.get(SECRETS_DIR_VARIABLE)


def secret_files(pod: Obj, container: Obj) -> dict[str, SecretFile]:
    """The files the container reads its secrets from: the Secret volume mounted at its
    AW_SECRETS_DIR."""
    directory = secrets_dir(container)
    volumes = {v.name: v for v in secret_volumes(pod)}
    mounted = [
        volumes[m["name"]]
        for m in container.get("volumeMounts", [])
        if m["mountPath"] == directory and m["name"] in volumes
    ]
    return {path: f for volume in mounted for path, f in volume.files.items()}


def worker_secret_names(target: str) -> set[str]:
    pod = worker_deployment(target)["spec"]["template"]["spec"]
    return {f.secret for f in secret_files(pod, worker_container(target)).values()}


# --- the manifests are valid -------------------------------------------------------------

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_NAME_REF = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "kind": {"type": "string"}},
    "additionalProperties": False,
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}},
}

_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|[smhdwy]))+$"}
# One alerting or recording rule of a PrometheusRule (prometheus-operator v1).
_RULE = {
    "type": "object",
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": "string", "minLength": 1},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}

# The parts of the CRDs' schemas these manifests use (KEDA 2.x, prometheus-operator v1); the
# Kubernetes schemas do not know these kinds. Values under a trigger's metadata must be
# strings, a common slip (`value: 32`) that KEDA rejects only at apply time.
CRD_SCHEMAS: dict[tuple[str, str], Obj] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"type": "string"},
                            "apiVersion": {"type": "string"},
                            "envSourceContainerName": {"type": "string"},
                        },
                    },
                    **{
                        key: {"type": "integer", "minimum": 0}
                        for key in (
                            "pollingInterval",
                            "cooldownPeriod",
                            "initialCooldownPeriod",
                            "idleReplicaCount",
                            "minReplicaCount",
                            "maxReplicaCount",
                        )
                    },
                    "advanced": {"type": "object"},
                    "fallback": {"type": "object"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "metadata": _STR_MAP,
                                "authenticationRef": _NAME_REF,
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "useCachedMetrics": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "minProperties": 1,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                key: {"type": "string", "minLength": 1}
                                for key in ("parameter", "name", "key")
                            },
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "properties": {"matchLabels": _STR_MAP},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": {"type": "string", "pattern": "^[0-9]+[smh]$"},
                                "scrapeTimeout": {
                                    "type": "string",
                                    "pattern": "^[0-9]+[smh]$",
                                },
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                            },
                        },
                    },
                },
            },
        },
    },
    # components/prometheusrule; promtool checks the rules themselves (tests/test_alerts.py).
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {"type": "array", "minItems": 1, "items": _RULE},
                            },
                        },
                    },
                },
            },
        },
    },
}


def schema_errors(obj: Obj) -> list[str]:
    kind, api_version = obj["kind"], obj["apiVersion"]
    crd = CRD_SCHEMAS.get((api_version, kind))
    if crd is not None:
        validator = jsonschema.Draft202012Validator(crd)
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {api_version} {kind} (a CRD? add it to CRD_SCHEMAS)"]
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_matches_its_schema(target: str) -> None:
    problems = [
        f"{obj['kind']}/{obj['metadata']['name']}: {error}"
        for obj in render(target)
        for error in schema_errors(obj)
    ]
    assert not problems, f"{target} (Kubernetes {KUBERNETES_VERSION}):\n" + "\n".join(problems)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    deployment = json.loads(json.dumps(worker_deployment("base")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert any("readinesProbe" in e for e in schema_errors(deployment))


def test_every_component_is_rendered_by_an_overlay() -> None:
    used = set()
    for name in OVERLAYS:
        kustomization = yaml.safe_load((TARGETS[name] / "kustomization.yaml").read_text())
        for path in kustomization.get("components", []):
            used.add((TARGETS[name] / path).resolve())
    components = {p.resolve() for p in (KUSTOMIZE / "components").iterdir() if p.is_dir()}
    assert components - used == set(), "a component no overlay uses is never validated"


def test_the_secret_example_is_valid_and_not_deployed() -> None:
    base = KUSTOMIZE / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]
    assert not of_kind("base", "Secret"), "the base must only reference the Secret"
    example = yaml.safe_load((base / "secret.example.yaml").read_text())
    assert schema_errors(example) == []
    secret_name = example["metadata"]["name"]
    for target in TARGETS:
        refs = worker_secret_names(target)
        assert refs == {secret_name}, f"{target}: the worker must read the Secret {secret_name}"
    assert set(example["stringData"]) <= setting_env_names()
    secrets = {f"AW_{name.upper()}" for name in ("amqp_url", "database_url", "openai_api_key")}
    assert secrets <= set(example["stringData"]), "the example must document every secret"


# --- the manifests agree with the worker -------------------------------------------------


def served_paths() -> set[str]:
    """The paths worker/health.py routes (`web.get("/livez", ...)`)."""
    tree = ast.parse((ROOT / "worker" / "health.py").read_text())
    return {
        str(node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in {"get", "head", "route"}
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def test_the_health_server_serves_the_paths_used_here() -> None:
    assert {LIVENESS_PATH, READINESS_PATH, METRICS_PATH} <= served_paths()


@pytest.mark.parametrize("target", TARGETS)
def test_probes_hit_the_health_server(target: str) -> None:
    container = worker_container(target)
    expected = {
        "startupProbe": LIVENESS_PATH,
        "livenessProbe": LIVENESS_PATH,
        "readinessProbe": READINESS_PATH,
    }
    for probe, path in expected.items():
        assert probe in container, f"{target}: the worker has no {probe}"
        http = container[probe]["httpGet"]
        assert http["path"] == path, f"{target}: {probe} asks {http['path']}, not {path}"
        assert container_port(container, http["port"]) == health_port(target), probe
    assert container_port(container, "http-metrics") == health_port(target)


@pytest.mark.parametrize("target", TARGETS)
def test_the_metrics_service_reaches_the_health_port(target: str) -> None:
    deployment = worker_deployment(target)
    container = worker_container(target)
    services = [s for s in of_kind(target, "Service") if component(s) == "worker"]
    assert len(services) == 1, f"{target}: expected one Service for the worker's metrics"
    service = services[0]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert selects(service["spec"]["selector"], pod_labels(deployment))
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert "http-metrics" in ports, f"{target}: the Service has no port named http-metrics"
    target_port = ports["http-metrics"].get("targetPort", ports["http-metrics"]["port"])
    assert container_port(container, target_port) == health_port(target)
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == health_port(target)
        assert annotations.get("prometheus.io/path") == METRICS_PATH
    for monitor in of_kind(target, "ServiceMonitor"):
        if component(monitor) != "worker":
            continue  # the receiver's: test_the_receivers_metrics_are_scraped
        assert selects(monitor["spec"]["selector"]["matchLabels"], labels(service))
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports, f"{target}: ServiceMonitor names an unknown port"
            assert endpoint.get("path") == METRICS_PATH


@pytest.mark.parametrize("target", TARGETS)
def test_termination_grace_outlasts_the_drain(target: str) -> None:
    pod = worker_deployment(target)["spec"]["template"]["spec"]
    grace = float(effective(target, "shutdown_grace_s"))
    termination = pod.get("terminationGracePeriodSeconds", 30)
    assert termination >= grace + SHUTDOWN_HEADROOM_S, (
        f"{target}: terminationGracePeriodSeconds {termination} leaves no room for a "
        f"{grace:g} s drain (AW_SHUTDOWN_GRACE_S) and the last outbox pass"
    )


def setting_env_names() -> set[str]:
    """Every environment variable the worker reads (AW_<FIELD>, plus the aliases)."""
    names: set[str] = set()
    for model in (Settings, Topology):
        prefix = model.model_config.get("env_prefix") or ""
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
                continue  # nested settings (topology) read their own variables
            if isinstance(field.validation_alias, AliasChoices):
                names.update(c for c in field.validation_alias.choices if isinstance(c, str))
            else:
                names.add(f"{prefix}{name}".upper())
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_config_keys_are_settings(target: str) -> None:
    known = setting_env_names()
    for name, pod in pod_specs(target):
        for container in all_containers(pod):
            inline = {e["name"] for e in container.get("env", [])}
            assert inline <= known, f"{target} {name}: not settings: {sorted(inline - known)}"
    unknown = set(config(target)) - known
    assert not unknown, f"{target}: ConfigMap keys the worker never reads: {sorted(unknown)}"
    for secret in of_kind(target, "Secret"):
        keys = {*secret.get("data", {}), *secret.get("stringData", {})}
        assert keys <= known, f"{target}: Secret keys the worker never reads: {keys - known}"


def secret_values(target: str) -> dict[str, str]:
    """The Secret's values: the one the target renders (local), else the example's."""
    for secret in of_kind(target, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        return {**data, **secret.get("stringData", {})}
    example = yaml.safe_load((KUSTOMIZE / "base" / "secret.example.yaml").read_text())
    return dict(example["stringData"])


@pytest.mark.parametrize("target", TARGETS)
def test_config_values_parse(target: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("AW_", "OPENAI_")):
            monkeypatch.delenv(key)
    for key, value in worker_env(target).items():
        monkeypatch.setenv(key, value)
    # The worker's secret files as the kubelet would write them, in a directory of the test's.
    pod = worker_deployment(target)["spec"]["template"]["spec"]
    values = secret_values(target)
    for path, file in secret_files(pod, worker_container(target)).items():
        (tmp_path / path).write_text(values[file.key])
    monkeypatch.setenv(SECRETS_DIR_VARIABLE, str(tmp_path))
    settings = Settings()  # raises on a value that does not parse, such as AW_BACKEND=response
    assert settings.database_url.get_secret_value() == values["AW_DATABASE_URL"]


def test_a_misspelt_setting_is_not_a_setting() -> None:
    names = setting_env_names()
    assert {"AW_CONCURRENCY", "AW_INBOUND_QUEUE", "OPENAI_API_KEY"} <= names
    assert "AW_CONCURENCY" not in names
    assert "AW_TOPOLOGY" not in names


@pytest.mark.parametrize(
    "kind", ["ScaledObject", "ServiceMonitor", "NetworkPolicy", "PrometheusRule"]
)
def test_production_has_its_components(kind: str) -> None:
    # Also keeps the per-kind tests below from passing on nothing.
    assert of_kind("production", kind), f"production renders no {kind}"


@pytest.mark.parametrize("target", TARGETS)
def test_keda_watches_the_inbound_queue(target: str) -> None:
    for scaled in of_kind(target, "ScaledObject"):
        check_scaled_object(target, scaled)


def check_scaled_object(target: str, scaled: Obj) -> None:
    deployment = worker_deployment(target)
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], (
        f"{target}: with KEDA in charge, spec.replicas makes every apply reset the worker count"
    )
    assert scaled["spec"].get("minReplicaCount", 0) >= 1, "the sweeper and relay live in workers"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == effective(target, "inbound_queue")
    # The backlog target is one worker's worth of messages: the prefetch.
    assert trigger["metadata"]["value"] == effective(target, "concurrency")
    auths = {a["metadata"]["name"]: a for a in of_kind(target, "TriggerAuthentication")}
    auth = auths[trigger["authenticationRef"]["name"]]
    (host,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "host"]
    (secret,) = worker_secret_names(target)
    assert (host["name"], host["key"]) == (secret, "AW_AMQP_URL")


# --- pods are locked down ----------------------------------------------------------------


def lockdown_problems(pod: Obj, container: Obj) -> list[str]:
    pod_sc = pod.get("securityContext") or {}
    sc = container.get("securityContext") or {}

    def either(key: str) -> Any:
        return sc.get(key, pod_sc.get(key))

    checks = {
        "runAsNonRoot": either("runAsNonRoot") is True,
        "runAsUser not 0": either("runAsUser") not in (None, 0),
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "not privileged": not sc.get("privileged", False),
        "capabilities drop ALL": "ALL" in (sc.get("capabilities") or {}).get("drop", []),
        "no capabilities added": not (sc.get("capabilities") or {}).get("add"),
        "seccomp RuntimeDefault": (either("seccompProfile") or {}).get("type") == "RuntimeDefault",
    }
    return [f"{container['name']}: {check}" for check, ok in checks.items() if not ok]


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_locked_down(target: str) -> None:
    problems = [
        f"{name} {problem}"
        for name, pod in pod_specs(target)
        for container in all_containers(pod)
        for problem in lockdown_problems(pod, container)
    ]
    assert not problems, f"{target}:\n" + "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_no_container_takes_secrets_from_the_environment(target: str) -> None:
    # checkov's CKV_K8S_35: an environment is inherited by every child process and shows up in
    # crash reports and debug dumps; the settings read files instead (AW_SECRETS_DIR).
    problems = []
    pods = list(pod_specs(target))
    for name, pod in pods:
        for container in all_containers(pod):
            where = f"{name} {container['name']}"
            problems += [
                f"{where}: envFrom {source['secretRef']['name']}"
                for source in container.get("envFrom", [])
                if "secretRef" in source
            ]
            problems += [
                f"{where}: {e['name']} from a secretKeyRef"
                for e in container.get("env", [])
                if "secretKeyRef" in (e.get("valueFrom") or {})
            ]
    assert pods, f"{target} renders no pods"
    assert not problems, f"{target}:\n" + "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_read_only_files_where_the_setting_points(target: str) -> None:
    known = setting_env_names()
    files = 0
    for name, pod in pod_specs(target):
        volumes = {v.name: v for v in secret_volumes(pod)}
        for container in all_containers(pod):
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    continue
                assert mount["mountPath"] == secrets_dir(container), (
                    f"{name}: a Secret mounted where {SECRETS_DIR_VARIABLE} does not point"
                )
                assert mount.get("readOnly") is True, f"{name}: mount the Secret read-only"
        for volume in volumes.values():
            assert not volume.whole, f"{name}: mount the keys it reads (items), not every key"
            for path, file in volume.files.items():
                files += 1
                assert path == file.key, f"{name}: the file {path} must be named like its key"
                assert path in known, f"{name}: {path} is no setting"
                assert file.mode & 0o007 == 0, f"{name}: {path} is readable by any user"
                # The kubelet writes the files as root, in the pod's fsGroup.
                assert file.mode & 0o040, f"{name}: the worker's user cannot read {path}"
                assert (pod.get("securityContext") or {}).get("fsGroup") is not None, (
                    f"{name}: without an fsGroup the files are root's alone"
                )
    assert files, f"{target}: no pod reads a secret from a file"


# What each pod's command reads, and nothing more (the receiver: its own test below).
POD_SECRETS = {
    "worker": {"AW_AMQP_URL", "AW_DATABASE_URL", "AW_OPENAI_API_KEY"},
    "migrations": {"AW_DATABASE_URL"},
    # The API key deletes at OpenAI the files uploaded for the events it prunes.
    "prune": {"AW_DATABASE_URL", "AW_OPENAI_API_KEY"},
}


@pytest.mark.parametrize("target", TARGETS)
def test_each_pod_mounts_the_secrets_its_command_reads(target: str) -> None:
    example = yaml.safe_load((KUSTOMIZE / "base" / "secret.example.yaml").read_text())
    components = {f"{o['kind']}/{o['metadata']['name']}": component(o) for o in render(target)}
    seen = set()
    for name, pod in pod_specs(target):
        role = components[name]
        if role not in POD_SECRETS:
            continue
        seen.add(role)
        (container,) = pod["containers"]
        files = secret_files(pod, container)
        assert set(files) == POD_SECRETS[role], f"{target} {name}"
        assert not [f for f in files.values() if f.optional], f"{target} {name}: all required"
        assert set(files) <= set(example["stringData"]), "the example Secret must document them"
    assert seen == set(POD_SECRETS), f"{target}: no pod for {set(POD_SECRETS) - seen}"


@pytest.mark.parametrize("target", TARGETS)
def test_no_pod_gets_a_service_account_token(target: str) -> None:
    accounts = {a["metadata"]["name"]: a for a in of_kind(target, "ServiceAccount")}
    for name, pod in pod_specs(target):
        account = accounts.get(pod.get("serviceAccountName", "default"), {})
        mounted = pod.get(
            "automountServiceAccountToken", account.get("automountServiceAccountToken")
        )
        assert mounted is False, f"{target} {name} gets an API token it does not use"


@pytest.mark.parametrize("target", TARGETS)
def test_worker_selectors_pick_only_worker_pods(target: str) -> None:
    worker = pod_labels(worker_deployment(target))
    others = [
        pod_labels(o)
        for o in render(target)
        if o["kind"] in ("Deployment", "Job", "CronJob") and component(o) != "worker"
    ]
    selectors = [
        s["spec"]["selector"] for s in of_kind(target, "Service") if component(s) == "worker"
    ]
    selectors += [
        p["spec"]["selector"]["matchLabels"]
        for p in of_kind(target, "PodDisruptionBudget")
        if component(p) == "worker"
    ]
    selectors.append(worker_deployment(target)["spec"]["selector"]["matchLabels"])
    for selector in selectors:
        assert selects(selector, worker), f"{target}: {selector} misses the worker pods"
        assert not any(selects(selector, other) for other in others), (
            f"{target}: {selector} also picks other pods (the migrations Job's?)"
        )


@pytest.mark.parametrize("target", TARGETS)
def test_the_migrations_job_applies_on_its_own(target: str) -> None:
    """`kubectl apply -l app.kubernetes.io/component=migrations` must bring all the Job needs."""
    job = migrate_job(target)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == worker_container(target)["image"]
    assert job["spec"].get("backoffLimit") is not None
    assert job["spec"].get("ttlSecondsAfterFinished") is not None
    assert not [s for s in container.get("envFrom", []) if "configMapRef" in s], (
        "a generated ConfigMap would not exist yet when the Job is applied first"
    )
    accounts = {a["metadata"]["name"]: a for a in of_kind(target, "ServiceAccount")}
    account = accounts[pod["serviceAccountName"]]
    assert component(account) == "migrations", "the Job's ServiceAccount must come along"


@pytest.mark.parametrize("target", TARGETS)
def test_the_prune_job_runs_daily_alone_with_a_safe_cutoff(target: str) -> None:
    cron = prune_cronjob(target)
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == worker_container(target)["image"]
    args = container["args"]
    assert args[0] == "prune"
    cutoff = args[args.index("--older-than") + 1]
    assert cutoff.endswith("d")
    assert int(cutoff[:-1]) >= 7, "keep settled events long enough to recognise duplicates"
    # It deletes uploaded files at the API: at the workers' API (AW_OPENAI_BASE_URL), not OpenAI's
    # default, wherever an overlay points them.
    assert [s["configMapRef"]["name"] for s in container.get("envFrom", [])] == [
        s["configMapRef"]["name"] for s in worker_container(target)["envFrom"]
    ]


@pytest.mark.parametrize("target", OVERLAYS)
def test_images_are_pinned(target: str) -> None:
    for name, pod in pod_specs(target):
        for container in all_containers(pod):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{target} {name}: {image}"


@pytest.mark.parametrize("target", TARGETS)
def test_the_network_policy_allows_only_what_the_worker_needs(target: str) -> None:
    for policy in of_kind(target, "NetworkPolicy"):
        if component(policy) != "webhooks":  # its own test: test_the_receiver_reaches_only_...
            check_network_policy(target, policy["spec"])


def check_network_policy(target: str, spec: Obj) -> None:
    assert selects(spec["podSelector"]["matchLabels"], pod_labels(worker_deployment(target)))
    assert selects(spec["podSelector"]["matchLabels"], pod_labels(migrate_job(target)))
    assert selects(spec["podSelector"]["matchLabels"], pod_labels(prune_cronjob(target)))
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {(p["port"], p.get("protocol", "TCP")) for r in spec["ingress"] for p in r["ports"]}
    assert ingress == {(health_port(target), "TCP")}
    egress = {(p["port"], p.get("protocol", "TCP")) for r in spec["egress"] for p in r["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (5672, "TCP"), (443, "TCP")}


# --- the Dockerfile ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def flags(self) -> dict[str, str]:
        pairs = (w[2:].partition("=") for w in self.args.split() if w.startswith("--"))
        return {name: value for name, _, value in pairs}

    def exec_form(self) -> list[str] | None:
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (as Docker does)."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    heredocs = [i.line for i in instructions if re.search(r"<<-?['\"]?\w+", i.args)]
    assert not heredocs, f"heredocs (lines {heredocs}) are beyond this test's parser"
    return instructions


def dockerfile_stages() -> tuple[dict[str, str], list[list[Instruction]]]:
    """Global ARG defaults, and the instructions of each stage (FROM first)."""
    global_args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for instruction in parse_dockerfile(DOCKERFILE.read_text()):
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
    return global_args, stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[1][-1]


def runs(stage: list[Instruction]) -> list[str]:
    return [i.args for i in stage if i.keyword == "RUN"]


def test_dockerfile_base_images_are_pinned() -> None:
    global_args, stages = dockerfile_stages()
    names = set()
    for stage in stages:
        image, *alias = re.split(r"\s+as\s+", stage[0].args, flags=re.IGNORECASE)
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), image)
        if image not in names:  # FROM builder: an earlier stage, not an image
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"unpinned base {image!r}"
        names.update(alias)


def test_dockerfile_is_multi_stage_and_the_final_stage_only_copies() -> None:
    _, stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any("from" in i.flags() for i in final if i.keyword == "COPY")
    installs = re.compile(r"\b(apt-get|apt|apk|dnf|yum)\s+(install|add)\b|\bpip\b.*\binstall\b")
    compilers = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|python3?-dev)\b")
    for command in runs(final):
        assert not installs.search(command), f"the final stage installs: {command}"
        assert not compilers.search(command), f"the final stage uses a compiler: {command}"


def dockerfile_user() -> tuple[int, int | None]:
    users = [i.args for i in final_stage() if i.keyword == "USER"]
    assert users, "the final stage has no USER: the worker would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit(), "a numeric USER lets the kubelet verify runAsNonRoot"
    return int(user), int(group) if group.isdigit() else None


def test_dockerfile_runs_as_the_manifests_non_root_user() -> None:
    uid, gid = dockerfile_user()
    assert uid != 0
    for target in TARGETS:
        for name, pod in pod_specs(target):
            pod_sc = pod.get("securityContext") or {}
            for container in all_containers(pod):
                sc = {**pod_sc, **(container.get("securityContext") or {})}
                assert sc.get("runAsUser") == uid, f"{target} {name}: runAsUser is not {uid}"
                assert sc.get("runAsGroup", gid) == gid, f"{target} {name}: runAsGroup"


def cli_commands() -> set[str]:
    command = typer.main.get_command(cli_app)
    return set(getattr(command, "commands", {}))


def test_dockerfile_entrypoint_is_the_console_script_in_exec_form() -> None:
    final = final_stage()
    (entrypoint,) = [i.exec_form() for i in final if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i.exec_form() for i in final if i.keyword == "CMD"]
    assert entrypoint == [CONSOLE_SCRIPT], "exec form, so SIGTERM reaches the worker as PID 1"
    assert cmd == ["run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert CONSOLE_SCRIPT in scripts
    for target in TARGETS:
        for name, pod in pod_specs(target):
            for container in all_containers(pod):
                if IMAGE_NAME in container["image"]:
                    assert container["args"][0] in cli_commands(), f"{target} {name}"


def test_dockerfile_adds_no_urls_and_pip_keeps_no_cache() -> None:
    _, stages = dockerfile_stages()
    for instruction in (i for stage in stages for i in stage):
        if instruction.keyword == "ADD":
            assert "://" not in instruction.args, f"line {instruction.line}: ADD of a URL"
        if instruction.keyword == "RUN" and re.search(r"\bpip\b.*\binstall\b", instruction.args):
            assert "--no-cache-dir" in instruction.args, f"line {instruction.line}: pip cache"


def test_dockerfile_runtime_settings() -> None:
    final = final_stage()
    env: dict[str, str] = {}
    for instruction in final:
        if instruction.keyword == "ENV":
            for name, _, value in (w.partition("=") for w in shlex.split(instruction.args)):
                env[name] = value
    assert env.get("PYTHONUNBUFFERED") == "1", "logs must not sit in a buffer when killed"
    exposed = {p.partition("/")[0] for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert str(Settings.model_fields["health_port"].default) in exposed
    assert [i.args for i in final if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]


def test_dockerfile_copies_what_the_build_needs() -> None:
    _, stages = dockerfile_stages()
    builder = stages[0]
    sources = [
        word
        for i in builder
        if i.keyword == "COPY" and "from" not in i.flags()
        for word in i.args.split()[:-1]
        if not word.startswith("--")
    ]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert "schemas/" in sources, (
        "worker/schemas is a link to ../schemas: the wheel is built only if its target is there"
    )


def copy_paths(instruction: Instruction) -> tuple[list[str], str]:
    """A COPY's sources and its destination."""
    *sources, target = (w for w in instruction.args.split() if not w.startswith("--"))
    return sources, target


def image_venv() -> str:
    """The virtualenv the final stage copies from the builder, which the builder creates."""
    _, stages = dockerfile_stages()
    copied = [
        copy_paths(i)[0] for i in final_stage() if i.keyword == "COPY" and "from" in i.flags()
    ]
    assert len(copied) == 1, "the final stage copies one thing from the builder: the venv"
    (venv,) = copied[0]
    creates = re.compile(rf"-m\s+venv\s(\s*--?[\w-]+)*\s*{re.escape(venv)}(\s|$)")
    assert any(creates.search(c) for c in runs(stages[0])), f"the builder never creates {venv}"
    return venv


def test_dockerfile_installs_the_package_as_built_and_checks_its_schemas() -> None:
    """The wheel carries the schemas and the SQL: nothing goes into the installed package by hand,
    and the build proves, isolated from /src, that the installed package loads both schemas."""
    _, stages = dockerfile_stages()
    builder = stages[0]
    venv = image_venv()
    for instruction in (i for stage in stages for i in stage):
        if instruction.keyword in {"COPY", "ADD"}:
            sources, target = copy_paths(instruction)
            whole_venv = "from" in instruction.flags() and sources == [venv]
            assert whole_venv or not target.startswith(venv), f"line {instruction.line}"
    commands = runs(builder)
    by_hand = re.compile(r"\b(cp|mv|rsync|ln|tar|unzip)\s|__file__|site-packages|" + f"{venv}/lib")
    for command in commands:
        assert not by_hand.search(command), f"puts files into the package by hand: {command}"
    installs = [n for n, c in enumerate(commands) if re.search(r"\bpip\b.*\binstall\b", c)]
    checks = [
        n
        for n, c in enumerate(commands)
        if f"{venv}/bin/python -I -c" in c
        and "validator('user_message.v1')" in c
        and "validator('assistant_reply.v1')" in c
    ]
    assert installs, "the builder installs nothing"
    assert checks, "the build should prove the installed package loads its schemas"
    assert max(checks) > max(installs), "the schema check must run on the installed package"


# --- metrics named in the dashboard and the README exist ---------------------------------


def exported_metric_names() -> set[str]:
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        # A histogram is also named by its family name, as in the README's table.
        "histogram": ("", "_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    # The worker's, and the webhook receiver's (a process of its own).
    registries = (Metrics().registry, WebhookMetrics().registry)
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in suffixes[family.type]
    }


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_and_the_readme_use_real_metrics() -> None:
    queries = dashboard_queries()
    assert queries, "the dashboard has no queries"
    text = "\n".join(queries) + (ROOT / "README.md").read_text()
    used = set(re.findall(r"\bassistant_worker_\w+", text))
    assert used, "no metric is named"
    unknown = used - exported_metric_names()
    assert not unknown, f"not exported by worker/metrics.py or the receiver: {sorted(unknown)}"


@pytest.mark.parametrize("target", TARGETS)
def test_the_profiles_file_is_mounted_where_the_setting_says_and_is_valid(
    target: str, tmp_path: Path
) -> None:
    named = Path(worker_env(target)["AW_PROFILES_FILE"])
    mounts = {m["name"]: m for m in worker_container(target)["volumeMounts"]}
    volumes = worker_deployment(target)["spec"]["template"]["spec"]["volumes"]
    [volume] = [v for v in volumes if v["name"] == "profiles"]
    assert mounts["profiles"]["mountPath"] == str(named.parent)
    assert mounts["profiles"]["readOnly"] is True
    maps = {m["metadata"]["name"]: m.get("data") or {} for m in of_kind(target, "ConfigMap")}
    content = maps[volume["configMap"]["name"]][named.name]
    # As the worker will read it, from the mounted copy.
    (tmp_path / named.name).write_text(content)
    load_profiles(tmp_path / named.name, {})


# --- the webhooks receiver (components/webhooks) -----------------------------------------

WEBHOOKS = "webhooks"  # the receiver's command, and its objects' component label
WEBHOOKS_COMPONENT = KUSTOMIZE / "components" / "webhooks"
INGRESS_EXAMPLE = WEBHOOKS_COMPONENT / "ingress.example.yaml"
RECEIVER_SOURCE = ROOT / "worker" / "webhooks" / "receiver.py"
# Registered with OpenAI as https://<ingress host>/webhooks/openai.
WEBHOOK_PATH = "/webhooks/openai"
# Required: the database and the signing secret; the previous secret only during a rotation.
RECEIVER_SECRETS = {"AW_DATABASE_URL", "OPENAI_WEBHOOK_SECRET"}
ROTATION_SECRET = "AW_WEBHOOK_SECRET_PREVIOUS"


def _with_webhooks() -> list[str]:
    """The overlays that list components/webhooks."""
    found = []
    for name in OVERLAYS:
        kustomization = yaml.safe_load((TARGETS[name] / "kustomization.yaml").read_text())
        listed = {(TARGETS[name] / path).resolve() for path in kustomization.get("components", [])}
        if WEBHOOKS_COMPONENT.resolve() in listed:
            found.append(name)
    return found


WITH_WEBHOOKS = _with_webhooks()


def webhooks_objects(target: str, kind: str) -> list[Obj]:
    return [o for o in of_kind(target, kind) if component(o) == WEBHOOKS]


def webhooks_object(target: str, kind: str) -> Obj:
    found = webhooks_objects(target, kind)
    assert len(found) == 1, f"{target}: expected one webhooks {kind}, found {len(found)}"
    return found[0]


def webhooks_pod(target: str) -> Obj:
    return dict(webhooks_object(target, "Deployment")["spec"]["template"]["spec"])


def webhooks_container(target: str) -> Obj:
    containers = webhooks_pod(target)["containers"]
    assert len(containers) == 1, f"{target}: the receiver's pod should run one container"
    return dict(containers[0])


def webhooks_env(target: str) -> dict[str, str]:
    """The receiver's inline values (it reads no ConfigMap: see the secrets test)."""
    return {
        e["name"]: e["value"] for e in webhooks_container(target).get("env", []) if "value" in e
    }


def webhooks_setting(target: str, field: str) -> str:
    default = Settings.model_fields[field].default
    return webhooks_env(target).get(f"AW_{field.upper()}", str(default))


def webhooks_port(target: str) -> int:
    return int(webhooks_setting(target, "webhook_port"))


def _string_constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _routed_path(node: ast.AST, constants: dict[str, str]) -> str | None:
    """The path of `web.get("/livez", ...)` or `web.post(WEBHOOK_PATH, ...)`, else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
        return None
    if node.func.attr not in {"get", "post", "head", "route"}:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return constants.get(first.id) if isinstance(first, ast.Name) else None


def routed_paths(source: Path) -> set[str]:
    tree = ast.parse(source.read_text())
    constants = _string_constants(tree)
    found = (_routed_path(node, constants) for node in ast.walk(tree))
    return {path for path in found if path is not None and path.startswith("/")}


def test_production_deploys_the_receiver() -> None:
    # Also keeps the per-target tests below from passing on nothing.
    assert "production" in WITH_WEBHOOKS


def test_the_receiver_serves_the_paths_used_here() -> None:
    assert RECEIVER_SOURCE.is_file(), "the manifests deploy a receiver the code does not have"
    used = {WEBHOOK_PATH, LIVENESS_PATH, READINESS_PATH, METRICS_PATH}
    assert used <= routed_paths(RECEIVER_SOURCE)


@pytest.mark.parametrize("target", TARGETS)
def test_webhook_mode_is_on_exactly_where_a_receiver_is_deployed(target: str) -> None:
    # Workers in webhook mode with no receiver learn of a finished response only from the slow
    # sweep (AW_WEBHOOK_SWEEP_S); a receiver beside polling workers records what nobody reads.
    deployed = bool(webhooks_objects(target, "Deployment"))
    assert deployed == (target in WITH_WEBHOOKS)
    assert (effective(target, "webhooks").lower() == "true") == deployed, target


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receiver_runs_webhooks_from_the_worker_image(target: str) -> None:
    deployment = webhooks_object(target, "Deployment")
    container = webhooks_container(target)
    assert container["args"] == [WEBHOOKS]
    assert container["image"] == worker_container(target)["image"]
    assert deployment["spec"].get("replicas", 1) >= 2, "one must answer while another moves"


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receivers_probes_and_metrics_use_its_port(target: str) -> None:
    container = webhooks_container(target)
    port = webhooks_port(target)
    assert port in {p["containerPort"] for p in container["ports"]}
    expected = {
        "startupProbe": LIVENESS_PATH,
        "livenessProbe": LIVENESS_PATH,
        "readinessProbe": READINESS_PATH,
    }
    for probe, path in expected.items():
        assert probe in container, f"{target}: the receiver has no {probe}"
        http = container[probe]["httpGet"]
        assert http["path"] == path, f"{target}: {probe} asks {http['path']}, not {path}"
        assert container_port(container, http["port"]) == port, probe
    template = webhooks_object(target, "Deployment")["spec"]["template"]
    annotations = template["metadata"].get("annotations") or {}
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == port
        assert annotations.get("prometheus.io/path") == METRICS_PATH


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receivers_service_reaches_its_port(target: str) -> None:
    service = webhooks_object(target, "Service")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "the Ingress is the way in"
    assert selects(service["spec"]["selector"], pod_labels(webhooks_object(target, "Deployment")))
    container = webhooks_container(target)
    for port in service["spec"]["ports"]:
        target_port = port.get("targetPort", port["port"])
        assert container_port(container, target_port) == webhooks_port(target), port


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receivers_metrics_are_scraped(target: str) -> None:
    service = webhooks_object(target, "Service")
    template = webhooks_object(target, "Deployment")["spec"]["template"]
    annotated = "prometheus.io/port" in (template["metadata"].get("annotations") or {})
    monitors = [
        m
        for m in of_kind(target, "ServiceMonitor")
        if selects(m["spec"]["selector"]["matchLabels"], labels(service))
    ]
    if of_kind(target, "ServiceMonitor"):
        # An overlay with the prometheus-operator scrapes the receiver the same way.
        assert len(monitors) == 1, f"{target}: expected one ServiceMonitor for the receiver"
    assert monitors or annotated, f"{target}: nothing scrapes the receiver"
    ports = {p["name"] for p in service["spec"]["ports"]}
    for monitor in monitors:
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports, f"{target}: the receiver's Service has no such port"
            assert endpoint.get("path") == METRICS_PATH


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receiver_reaches_only_postgres_and_admits_only_its_port(target: str) -> None:
    receiver = pod_labels(webhooks_object(target, "Deployment"))
    # NetworkPolicies add up: any other one selecting these pods would widen what they reach.
    selecting = [
        p
        for p in of_kind(target, "NetworkPolicy")
        if selects(p["spec"]["podSelector"].get("matchLabels") or {}, receiver)
    ]
    assert selecting == [webhooks_object(target, "NetworkPolicy")], (
        f"{target}: the receiver's pods must be selected by its own NetworkPolicy only"
    )
    spec = selecting[0]["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ingress = {(p["port"], p.get("protocol", "TCP")) for r in spec["ingress"] for p in r["ports"]}
    assert ingress == {(webhooks_port(target), "TCP")}
    egress = {(p["port"], p.get("protocol", "TCP")) for r in spec["egress"] for p in r["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receivers_selectors_pick_only_its_pods(target: str) -> None:
    deployment = webhooks_object(target, "Deployment")
    receiver = pod_labels(deployment)
    others = [
        pod_labels(o)
        for o in render(target)
        if o["kind"] in ("Deployment", "Job", "CronJob") and component(o) != WEBHOOKS
    ]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        webhooks_object(target, "Service")["spec"]["selector"],
        webhooks_object(target, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        webhooks_object(target, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selects(selector, receiver), f"{target}: {selector} misses the receiver's pods"
        assert not any(selects(selector, other) for other in others), (
            f"{target}: {selector} also picks other pods (the worker's?)"
        )


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_a_drain_leaves_a_receiver_answering(target: str) -> None:
    replicas = webhooks_object(target, "Deployment")["spec"].get("replicas", 1)
    budget = webhooks_object(target, "PodDisruptionBudget")["spec"]
    may_go = budget.get("maxUnavailable", replicas - budget.get("minAvailable", 0))
    assert 1 <= may_go < replicas, f"{target}: a drain must proceed and keep a receiver"


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receiver_gets_only_its_secrets_from_the_secret(target: str) -> None:
    files = secret_files(webhooks_pod(target), webhooks_container(target))
    assert not [v for v in secret_volumes(webhooks_pod(target)) if v.whole], (
        "the whole Secret would give the pod that faces the internet the OpenAI API key and the "
        "RabbitMQ password"
    )
    assert {f.secret for f in files.values()} == worker_secret_names(target)
    required = {path for path, f in files.items() if not f.optional}
    assert required == RECEIVER_SECRETS
    assert set(files) == RECEIVER_SECRETS | {ROTATION_SECRET}
    example = yaml.safe_load((KUSTOMIZE / "base" / "secret.example.yaml").read_text())
    assert set(files) <= set(example["stringData"]), "the example Secret must document them"


@pytest.mark.parametrize("target", WITH_WEBHOOKS)
def test_the_receiver_waits_for_its_endpoint_removal_and_then_stops_quickly(target: str) -> None:
    pause = webhooks_container(target)["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown = float(webhooks_setting(target, "shutdown_grace_s"))
    termination = webhooks_pod(target).get("terminationGracePeriodSeconds", 30)
    assert pause >= 1, "the Service and the ingress controller take a moment to drop the pod"
    assert termination > pause + shutdown, (
        f"{target}: terminationGracePeriodSeconds {termination} cuts the {pause} s pause plus "
        f"the {shutdown:g} s drain (AW_SHUTDOWN_GRACE_S) short"
    )
    assert termination <= 30, "a receiver answers in milliseconds; a long grace slows rollouts"


def test_the_ingress_example_is_valid_routes_only_deliveries_and_is_not_deployed() -> None:
    kustomization = yaml.safe_load((WEBHOOKS_COMPONENT / "kustomization.yaml").read_text())
    assert INGRESS_EXAMPLE.name not in kustomization["resources"]
    ingress = yaml.safe_load(INGRESS_EXAMPLE.read_text())
    assert schema_errors(ingress) == []
    assert ingress["spec"].get("tls"), "OpenAI delivers to https URLs only"
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    # Not "/": the probes and /metrics share the receiver's port.
    assert [p["path"] for p in paths] == [WEBHOOK_PATH]
    backend = paths[0]["backend"]["service"]
    service = yaml.safe_load((WEBHOOKS_COMPONENT / "service.yaml").read_text())
    assert backend["name"] == service["metadata"]["name"]
    ports = {p["name"] for p in service["spec"]["ports"]} | {
        p["port"] for p in service["spec"]["ports"]
    }
    assert backend["port"].get("name", backend["port"].get("number")) in ports


# --- checkov: the production overlay and the Dockerfile -----------------------------------

# Installed by `make checkov` (which `make test` depends on) in a virtualenv of its own, beside
# this one: its dozens of pinned dependencies never move the worker's.
CHECKOV = Path(sys.prefix) / "tools" / "checkov" / "bin" / "checkov"
CHECKOV_TARGET = "production"
DEPLOY_README = ROOT / "deploy" / "README.md"
# deploy/README.md's section whose table justifies each finding left standing.
FINDINGS_HEADING = "### checkov findings"
# A pod with every fault checkov knows, scanned beside the overlay: a scan that finds nothing
# in it did not run its checks.
CANARY = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "checkov-canary"},
    "spec": {
        "containers": [
            {
                "name": "canary",
                "image": "example.com/canary:latest",
                "securityContext": {"privileged": True},
            }
        ]
    },
}
CANARY_RESOURCE = "Pod/checkov-canary"


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    check: str  # CKV_K8S_35
    resource: str  # Deployment/assistant-worker, or deploy/Dockerfile


def _finding(check_type: str, failed: Obj) -> Finding:
    if check_type == "dockerfile":
        return Finding(failed["check_id"], DOCKERFILE.relative_to(ROOT).as_posix())
    kind, _namespace, name = failed["resource"].split(".", 2)
    return Finding(failed["check_id"], f"{kind}/{name}")


@dataclass(frozen=True, slots=True)
class CheckovReport:
    findings: frozenset[Finding]
    summaries: dict[str, Obj]  # by check type: passed, failed, resource_count, parsing_errors


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> CheckovReport:
    if not CHECKOV.is_file():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make checkov`", pytrace=False)
    scanned = tmp_path_factory.mktemp("checkov")
    (scanned / f"{CHECKOV_TARGET}.yaml").write_text(yaml.safe_dump_all(render(CHECKOV_TARGET)))
    (scanned / "canary.yaml").write_text(yaml.safe_dump(CANARY))
    (scanned / "Dockerfile").write_text(DOCKERFILE.read_text())
    command = [str(CHECKOV), "--directory", str(scanned), "--framework", "kubernetes"]
    command += ["dockerfile", "--output", "json", "--skip-download", "--soft-fail"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"checkov failed:\n{proc.stderr[-2000:]}"
    parsed = json.loads(proc.stdout)
    reports = parsed if isinstance(parsed, list) else [parsed]
    return CheckovReport(
        frozenset(
            _finding(r["check_type"], failed)
            for r in reports
            for failed in r["results"]["failed_checks"]
        ),
        {r["check_type"]: r["summary"] for r in reports},
    )


def justified_findings(readme: str) -> dict[Finding, str]:
    """The rows of deploy/README.md's findings table: each check, its objects, and why."""
    section = readme.partition(FINDINGS_HEADING)[2]
    assert section, f"deploy/README.md has no {FINDINGS_HEADING!r} section"
    justified: dict[Finding, str] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if not line.startswith("| `CKV"):
            continue
        check_cell, objects_cell, why = (cell.strip() for cell in line.strip("|").split("|")[:3])
        check = re.findall(r"`([A-Z0-9_]+)`", check_cell)[0]
        for resource in re.findall(r"`([^`]+)`", objects_cell):
            justified[Finding(check, resource)] = why
    return justified


def test_checkov_scans_every_object_and_finds_the_canarys_faults(
    checkov_report: CheckovReport,
) -> None:
    summaries = checkov_report.summaries
    assert summaries["kubernetes"]["parsing_errors"] == 0
    # checkov counts some objects twice over (a CronJob, say, and its pod template).
    assert summaries["kubernetes"]["resource_count"] >= len(render(CHECKOV_TARGET)) + 1
    assert summaries["dockerfile"]["resource_count"] == 1
    assert summaries["dockerfile"]["passed"] > 0, "checkov ran no check on the Dockerfile"
    canary = {f.check for f in checkov_report.findings if f.resource == CANARY_RESOURCE}
    # Privileged; privilege escalation allowed; may run as root; the latest tag, no digest.
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_14", "CKV_K8S_43"} <= canary


def test_every_checkov_finding_is_fixed_or_justified_in_the_deploy_readme(
    checkov_report: CheckovReport,
) -> None:
    found = {f for f in checkov_report.findings if f.resource != CANARY_RESOURCE}
    justified = justified_findings(DEPLOY_README.read_text())
    unjustified = sorted(found - set(justified))
    assert not unjustified, (
        f"checkov findings on {CHECKOV_TARGET} or the Dockerfile: fix each, or say why it stays "
        f"in deploy/README.md ({FINDINGS_HEADING}): {unjustified}"
    )
    stale = sorted(set(justified) - found)
    assert not stale, f"justified in deploy/README.md but no longer found: drop them: {stale}"
    assert all(len(why) >= 40 for why in justified.values()), "each row says why, not just ok"
