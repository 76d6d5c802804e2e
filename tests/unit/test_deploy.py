"""The deployment files in deploy/: alert rules, dashboard, manifests, image, systemd unit.

They are not imported by the daemon, so nothing else notices when they drift from it: a renamed
metric silences an alert, a renamed config key stops every pod at start. These tests tie them to
the code (the metrics registry, the config loader) and run promtool where it is installed.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from outbox.config_loader import load_settings
from outbox.metrics import Metrics
from tests.paths import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "outbox-dashboard.json"
DOCKERFILE = DEPLOY / "Dockerfile"
SYSTEMD_UNIT = DEPLOY / "outbox.service"
SECRET_EXAMPLE = KUBERNETES / "secret.example.yaml"
SECRETS_DIR = "/run/secrets/outbox/"

METRIC_NAME = re.compile(r"\boutbox_[A-Za-z0-9_]+")
# Env var names that, by their name, hold a credential and so must come from a Secret.
SECRET_LIKE_ENV = re.compile(r"KEY|PASS|SECRET|TOKEN|DATABASE_URL")

YAML_FILES = sorted([*KUBERNETES.glob("*.yaml"), *PROMETHEUS.glob("*.yml")])


def _yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _manifest(name: str, kind: str) -> dict[str, Any]:
    docs = [doc for doc in _yaml_documents(KUBERNETES / name) if doc.get("kind") == kind]
    assert len(docs) == 1, f"{name}: expected one {kind}"
    return docs[0]


def _container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _exposed_metric_names() -> set[str]:
    """The sample names the daemon's registry exposes (without exercising any code path)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def _configmap_toml() -> str:
    text: str = _manifest("configmap.yaml", "ConfigMap")["data"]["outbox.toml"]
    return text


def _secret_references(config: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The env var names and file paths the config's channels take secrets from."""
    env_names: set[str] = set()
    files: set[str] = set()
    for channel in config.get("channels", []):
        for key, value in channel.items():
            if key.endswith("_env"):
                env_names.add(value)
            elif key.endswith("_file"):
                files.add(value)
    return env_names, files


# --- Prometheus rules ------------------------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (package prometheus)")
    return path


def _run(args: list[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=60, cwd=PROMETHEUS, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool: str) -> None:
    result = _run([promtool, "test", "rules", str(ALERT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    # promtool passes a test file that never mentions an alert, so coverage is checked here.
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for name in sorted({rule["alert"] for rule in _alert_rules()}):
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == name]
        assert any(expected), f"{name}: no test case where it fires"
        assert [] in expected, f"{name}: no test case where it stays quiet"


def test_alert_rules_carry_severity_and_annotations() -> None:
    rules = _alert_rules()
    assert rules
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), rule["alert"]
        assert "$value" in annotations["description"], rule["alert"]
        if "channel" in rule["expr"]:
            assert "$labels.channel" in annotations["summary"], rule["alert"]


# --- metric names against the daemon's registry ------------------------------------------


def test_alerts_use_only_exposed_metrics() -> None:
    used: set[str] = set()
    for rule in _alert_rules():
        used.update(METRIC_NAME.findall(rule["expr"]))
        for text in rule["annotations"].values():
            used.update(METRIC_NAME.findall(text))
    assert used
    missing = sorted(used - _exposed_metric_names())
    assert not missing, f"alerts.yml uses metrics the daemon does not expose: {missing}"


def test_dashboard_uses_only_exposed_metrics() -> None:
    dashboard = _dashboard()
    used: set[str] = set()
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            used.update(METRIC_NAME.findall(target.get("expr", "")))
    for variable in dashboard["templating"]["list"]:
        used.update(METRIC_NAME.findall(json.dumps(variable.get("query", ""))))
    assert used
    missing = sorted(used - _exposed_metric_names())
    assert not missing, f"the dashboard uses metrics the daemon does not expose: {missing}"


def test_promtool_check_metrics(promtool: str) -> None:
    metrics = Metrics(CollectorRegistry())
    # Children with labels, so that sample lines are linted too, not only HELP and TYPE.
    metrics.webhook("shop-de", "stored")
    metrics.webhook("unknown", "unknown_channel")
    metrics.paused("shop-de", True)
    metrics.rate("shop-de", 80.0)
    exposition = generate_latest(metrics.registry).decode()
    result = _run([promtool, "check", "metrics"], stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


# --- Kubernetes manifests ----------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_parses(path: Path) -> None:
    docs = _yaml_documents(path)
    assert docs
    assert all(isinstance(doc, dict) for doc in docs)


def test_kustomization_lists_the_manifests_but_not_the_secret_example() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text(encoding="utf-8"))
    resources = kustomization["resources"]
    assert SECRET_EXAMPLE.name not in resources
    assert {"configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml"} <= set(resources)
    for name in resources:
        assert (KUBERNETES / name).is_file(), name


def test_probes_point_at_health_endpoints_on_the_container_port() -> None:
    container = _container(_manifest("deployment.yaml", "Deployment"), "outbox")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}

    def probe_target(probe: dict[str, Any]) -> tuple[str, int]:
        port = probe["httpGet"]["port"]
        return probe["httpGet"]["path"], ports[port] if isinstance(port, str) else port

    assert probe_target(container["livenessProbe"]) == ("/healthz", 8080)
    assert probe_target(container["readinessProbe"]) == ("/readyz", 8080)
    service = _manifest("service.yaml", "Service")
    assert service["spec"]["ports"][0]["targetPort"] in (8080, "http")
    assert ports.get("http") == 8080


def test_configmap_is_a_valid_outbox_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _configmap_toml()
    env_names, files = _secret_references(tomllib.loads(text))
    # Issue 19 §3: every credential is a mounted file, none an environment variable.
    assert not env_names, "credentials are files, not env vars"
    assert files, "the example should take a secret from a file"
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for file in files:
        assert file.startswith(SECRETS_DIR), file
        secret = secrets_dir / file.removeprefix(SECRETS_DIR)
        secret.write_text("dummy-secret-long-enough-for-a-password\n", encoding="utf-8")
        secret.chmod(0o600)
    url_file = secrets_dir / "database-url"
    url_file.write_text("postgresql://outbox@db.invalid/outbox\n", encoding="utf-8")
    monkeypatch.setenv("OUTBOX_DATABASE_URL_FILE", str(url_file))
    config = tmp_path / "outbox.toml"
    config.write_text(text.replace(SECRETS_DIR, f"{secrets_dir}/"), encoding="utf-8")

    settings = load_settings(config)

    assert {channel.dialect.value for channel in settings.channels} == {"cloud", "onprem"}
    assert settings.http.port == 8080
    grace = _manifest("deployment.yaml", "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert settings.sender.shutdown_grace.total_seconds() < grace


def test_deployment_provides_every_secret_the_config_references() -> None:
    env_names, files = _secret_references(tomllib.loads(_configmap_toml()))
    deployment = _manifest("deployment.yaml", "Deployment")
    container = _container(deployment, "outbox")
    env = {item["name"]: item for item in container["env"]}
    assert env["OUTBOX_CONFIG"]["value"] == "/etc/outbox/outbox.toml"
    assert env["OUTBOX_LOG_FORMAT"]["value"] == "json"
    assert not env_names
    files.add(env["OUTBOX_DATABASE_URL_FILE"]["value"])

    volumes = {
        volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
    }
    mounted: set[str] = set()
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            mounted.update(f"{mount['mountPath']}/{item['path']}" for item in secret["items"])
    assert files <= mounted


def test_secret_keys_referenced_exist_in_the_example() -> None:
    example = _manifest(SECRET_EXAMPLE.name, "Secret")
    keys = set(example["stringData"])
    for value in example["stringData"].values():
        assert "REPLACE" in value, "secret.example.yaml must hold placeholders only"
    referenced: set[str] = set()
    for name, kind in (("deployment.yaml", "Deployment"), ("migrate-job.yaml", "Job")):
        pod = _manifest(name, kind)["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] == example["metadata"]["name"]
                    referenced.add(ref["key"])
        for volume in pod.get("volumes", []):
            referenced.update(item["key"] for item in volume.get("secret", {}).get("items", []))
    assert referenced <= keys, sorted(referenced - keys)


def test_no_literal_secrets_outside_the_example() -> None:
    for path in KUBERNETES.glob("*.yaml"):
        if path == SECRET_EXAMPLE:
            continue
        for doc in _yaml_documents(path):
            if doc.get("kind") == "Secret":
                assert not doc.get("data"), path.name
                assert not doc.get("stringData"), path.name
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                for item in container.get("env", []):
                    if item["name"].endswith("_FILE"):
                        continue  # a path to a mounted secret (checked below), not a secret
                    if SECRET_LIKE_ENV.search(item["name"]):
                        assert "value" not in item, f"{path.name}: {item['name']} is a literal"


@pytest.mark.parametrize(
    ("name", "kind"), [("deployment.yaml", "Deployment"), ("migrate-job.yaml", "Job")]
)
def test_no_credential_is_an_environment_variable(name: str, kind: str) -> None:
    """Issue 19 §3: env vars show in /proc/<pid>/environ, reach child processes and cannot be
    rotated by SIGHUP; every credential is a file mounted from the Secret."""
    workload = _manifest(name, kind)
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["containers"]:
        for item in container.get("env", []):
            assert "valueFrom" not in item, f"{name}: {item['name']} comes from a Secret"
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        mounted = {
            f"{mount['mountPath']}/{item['path']}": item["key"]
            for mount in container["volumeMounts"]
            if "secret" in volumes[mount["name"]]
            for item in volumes[mount["name"]]["secret"]["items"]
        }
        assert mounted[env["OUTBOX_DATABASE_URL_FILE"]] == "database-url"


def test_the_master_key_is_a_mounted_secret_file() -> None:
    deployment = _manifest("deployment.yaml", "Deployment")
    container = _container(deployment, "outbox")
    path = {item["name"]: item for item in container["env"]}["OUTBOX_SECRET_KEY_FILE"]["value"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounted = {
        f"{mount['mountPath']}/{item['path']}": item["key"]
        for mount in container["volumeMounts"]
        if "secret" in volumes[mount["name"]]
        for item in volumes[mount["name"]]["secret"]["items"]
    }
    assert mounted[path] == "master-key"


@pytest.mark.parametrize(
    ("name", "kind"), [("deployment.yaml", "Deployment"), ("migrate-job.yaml", "Job")]
)
def test_workloads_run_locked_down(name: str, kind: str) -> None:
    workload = _manifest(name, kind)
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= container["resources"].keys()
    # The image's USER is numeric; the pod must not ask for another (or root).
    user = re.search(r"^USER (\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert user is not None
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))


def test_deployment_shape() -> None:
    deployment = _manifest("deployment.yaml", "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    container = _container(deployment, "outbox")
    assert container["args"] == ["run"]
    job = _container(_manifest("migrate-job.yaml", "Job"), "migrate")
    assert job["args"] == ["migrate"]
    assert job["image"] == container["image"]
    pdb = _manifest("pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_prometheus_scrape_config_names_the_job_the_alerts_expect() -> None:
    (job,) = yaml.safe_load((KUBERNETES / "prometheus-scrape.yaml").read_text(encoding="utf-8"))[
        "scrape_configs"
    ]
    assert job["job_name"] == "outbox"
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    assert any('job="outbox"' in rule["expr"] for rule in _alert_rules())
    monitor = _manifest("servicemonitor.yaml", "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    # The ServiceMonitor's job label is the Service's name.
    assert _manifest("service.yaml", "Service")["metadata"]["name"] == "outbox"


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_panels_have_a_datasource_and_targets() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] == 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["channel"]["multi"] is True
    assert variables["channel"]["includeAll"] is True
    assert "label_values(outbox_backlog_messages, channel)" in json.dumps(variables["channel"])
    panels = [panel for panel in _panels(dashboard["panels"]) if panel["type"] != "row"]
    assert panels
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("datasource"), panel["title"]
        assert panel.get("targets"), panel["title"]
        assert all(target.get("expr") for target in panel["targets"]), panel["title"]


def test_dashboard_expressions_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses PromQL only inside rule files, so each expression becomes a recording
    # rule, with Grafana's variables replaced by what Grafana would send.
    substitutions = {"$__rate_interval": "5m", "$channel": ".*"}
    rules = []
    for number, panel in enumerate(_panels(_dashboard()["panels"])):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard:panel{number}:{target['refId']}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = _run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- image and systemd unit ----------------------------------------------------------------


def test_dockerfile_copies_existing_paths_and_runs_the_daemon() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert 'ENTRYPOINT ["outbox"]' in text
    assert 'CMD ["run"]' in text
    assert re.search(r"^EXPOSE 8080$", text, re.MULTILINE)


def test_systemd_unit_is_hardened() -> None:
    # strict=False: systemd allows a key (Environment=) more than once.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(SYSTEMD_UNIT.read_text(encoding="utf-8"))
    service = unit["Service"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ExecStart"].endswith("outbox run")
    assert service["LimitCORE"] == "0"  # a core dump would hold every key (issue 19 §3)
