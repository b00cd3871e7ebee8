"""Static checks of the deployment files: Dockerfile, compose stack, Prometheus, Grafana,
Kubernetes and systemd. Pure file checks (plus local tools when present); no broker, no
network beyond loopback.

Local tools: promtool (Debian package `prometheus`), docker-compose / `docker compose`,
systemd-analyze. Outside CI a test whose tool is missing is skipped; in CI (`CI` set, and
.ci/run installs them) a missing tool fails the test.
"""

from __future__ import annotations

import configparser
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ojs_amqp.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
IN_CI = bool(os.environ.get("CI"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "ojs.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboard.yml"
K8S = DEPLOY / "kubernetes" / "ojs-amqp.yaml"
SYSTEMD = DEPLOY / "systemd" / "ojs-amqp.service"


def _daemon_metric_names() -> frozenset[str]:
    """Every series name the daemon's own registry can expose, as Prometheus scrapes it."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return frozenset(names)


#: Every metric the daemon exposes (names as scraped; histograms add _bucket/_sum/_count).
OJS_METRICS = _daemon_metric_names()

# PromQL words that can stand before "(" or "[" or be bare, and are not metric names.
_PROMQL_WORDS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "le",
    }
)


def _yaml() -> Any:
    import yaml

    return yaml


def _load(path: Path) -> Any:
    return _yaml().safe_load(path.read_text())


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in _yaml().safe_load_all(path.read_text()) if doc is not None]


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana query) selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, regexes
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($queue, $__rate_interval)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if is_call or word in _PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def _assert_known_metrics(exprs: list[str], where: str) -> set[str]:
    used: set[str] = set()
    for expr in exprs:
        for name in _metric_names(expr):
            assert name in OJS_METRICS or name.startswith("rabbitmq_") or name == "up", (
                f"{where}: unknown metric {name!r} in {expr!r}"
            )
            used.add(name)
    return used


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (queue, le) (rate(ojs_job_duration_seconds_bucket"
        '{queue=~"$queue", x="ojs_fake"}[$__rate_interval]))) > on (vhost) bogus_metric'
        ' and rabbitmq_x offset 5m unless up{job="a"} or ojs_outbox_pending'
    )
    assert _metric_names(expr) == {
        "ojs_job_duration_seconds_bucket",
        "bogus_metric",
        "rabbitmq_x",
        "up",
        "ojs_outbox_pending",
    }
    with pytest.raises(AssertionError, match="bogus_metric"):
        _assert_known_metrics([expr], "example")


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load(ALERTS)["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query["query"] if isinstance(query, dict) else query
        # label_values(METRIC_SELECTOR, LABEL) -> METRIC_SELECTOR
        exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query.strip()))
    return exprs


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _load(COMPOSE)
    return compose


def _bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> repository path of a compose service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = source
    return mounts


def _published(service: dict[str, Any]) -> set[int]:
    return {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports", [])}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _healthcheck_command() -> list[str]:
    (rest,) = [rest for kw, rest in _dockerfile_instructions() if kw == "HEALTHCHECK"]
    command = json.loads(rest[rest.index("CMD") + len("CMD") :].strip())
    assert isinstance(command, list)
    return command


# --- every file parses ---------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = [COMPOSE, *sorted(DEPLOY.rglob("*.yml")), *sorted(DEPLOY.rglob("*.yaml"))]
    assert len(files) >= 7
    for path in files:
        assert _load_all(path), f"{path} is empty"


def test_dashboard_is_json() -> None:
    assert isinstance(_dashboard(), dict)


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_basics() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0]) for f in froms]
    assert images and all(image == "python:3.11-slim" for image in images)

    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", "8080") in instructions
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "OJS_HTTP=0.0.0.0:8080" in env.split()
    assert "OJS_STORE=/data/ojs-amqp.db" in env.split()
    assert ("VOLUME", "/data") in instructions
    assert ("ENTRYPOINT", '["ojs-amqp"]') in instructions
    assert ("CMD", '["serve"]') in instructions
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ojs-amqp" in scripts


def test_dockerfile_copies_only_files_the_context_keeps() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", ".git", "*.db", ".mypy_cache", ".pytest_cache", ".ruff_cache"):
        assert required in ignored
    copies = [rest for kw, rest in _dockerfile_instructions() if kw == "COPY"]
    sources = [src for rest in copies if "--from=" not in rest for src in rest.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src not in ignored and src.rstrip("/") not in ignored, src


def test_healthcheck_uses_python_urllib_on_the_health_endpoint() -> None:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2]
    assert "/ojs/v1/health" in command[2]
    compile(command[2], "<healthcheck>", "exec")


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/ojs/v1/health" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}' if code == 200 else b'{"status":"degraded"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _run_healthcheck(port: int) -> int:
    code = _healthcheck_command()[2]
    env = {**os.environ, "OJS_HTTP": f"0.0.0.0:{port}"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=30
    ).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_exit_status_follows_the_endpoint(status: int, healthy: bool) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert (_run_healthcheck(server.server_address[1]) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _run_healthcheck(port) != 0


# --- broker versions ------------------------------------------------------------------------

#: The RabbitMQ versions .ci/run runs the suite against (the host's Debian 12 package, and
#: Debian 13's in a trixie root: tests/rabbit_node.py); a deployment file names no other.
TESTED_RABBITMQ = {"3.10": "3.10.8", "4.0": "4.0.5"}


def _rabbitmq_image_tags() -> dict[str, str]:
    """Every `rabbitmq:<tag>` image reference in the deployment files, by file (not the
    `rabbitmq:15692` host:port targets)."""
    files = [COMPOSE, *(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".json")]
    tags = {}
    for path in files:
        for match in re.finditer(r"\brabbitmq:(\d[\w.-]*)", path.read_text()):
            if not (match.group(1).isdigit() and int(match.group(1)) > 99):
                tags[f"{path.relative_to(ROOT)}:{match.start()}"] = match.group(1)
    return tags


def test_deploy_files_name_only_tested_rabbitmq_versions() -> None:
    from tests.rabbit_node import BROKERS

    assert set(TESTED_RABBITMQ) == set(BROKERS), "the harness and this list disagree"
    tags = _rabbitmq_image_tags()
    assert any(where.startswith("docker-compose.yml") for where in tags), tags
    for where, tag in tags.items():
        version = tag.removesuffix("-management")
        # a full, pinned version: a bare series tag (4.0) would pull an untested patch release
        assert version in TESTED_RABBITMQ.values(), f"{where}: rabbitmq:{tag} is not tested"


# --- docker-compose.yml --------------------------------------------------------------------


def test_compose_services_and_wiring() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"rabbitmq", "ojs-amqp", "prometheus", "grafana"}

    rabbit = services["rabbitmq"]
    assert re.fullmatch(r"rabbitmq:[\d.]+-management", rabbit["image"])
    assert _published(rabbit) >= {5672, 15672, 15692}
    assert rabbit["healthcheck"]["test"][-3:] == ["rabbitmq-diagnostics", "-q", "ping"]
    plugins_src = _bind_mounts(rabbit)["/etc/rabbitmq/enabled_plugins"]
    plugins = (ROOT / plugins_src).read_text().strip()
    assert re.fullmatch(r"\[[a-z_]+(,\s*[a-z_]+)*\]\.", plugins), plugins
    assert "rabbitmq_prometheus" in plugins
    assert "rabbitmq_management" in plugins

    ojs = services["ojs-amqp"]
    assert ojs["build"]["context"] == "."
    assert (ROOT / ojs["build"]["dockerfile"]) == DOCKERFILE
    assert ojs["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert ojs["environment"]["OJS_AMQP_URL"] == "amqp://guest:guest@rabbitmq:5672/"
    assert ojs["environment"]["OJS_HTTP"].endswith(":8080")
    assert 8080 in _published(ojs)
    data = [v for v in ojs["volumes"] if v.split(":")[1] == "/data"]
    assert len(data) == 1
    assert data[0].split(":")[0] in compose["volumes"], "/data must be a named volume"

    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert {
        "/etc/prometheus/prometheus.yml": "./deploy/prometheus/prometheus.yml",
        "/etc/prometheus/alerts.yml": "./deploy/prometheus/alerts.yml",
    }.items() <= _bind_mounts(prometheus).items()

    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    assert "prometheus" in grafana["depends_on"]


def test_compose_bind_mounts_exist_in_the_repo() -> None:
    for name, service in _compose()["services"].items():
        for target, source in _bind_mounts(service).items():
            assert (ROOT / source).exists(), f"{name}: {source} (for {target}) is missing"


def test_named_volumes_are_declared() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".")):
                assert source in compose["volumes"], f"{name}: volume {source} undeclared"


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_scrapes_the_daemon_and_the_broker() -> None:
    config = _load(PROMETHEUS)
    targets = {
        (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert ("/metrics", "ojs-amqp:8080") in targets
    assert ("/metrics", "rabbitmq:15692") in targets
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "ojs-amqp" in jobs  # the alerts use up{job="ojs-amqp"}
    # rule files resolve next to the config file, where compose mounts them too
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).resolve() == ALERTS


def test_alert_rules_are_well_formed() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_alerts_cover_the_observability_issue() -> None:
    exprs = [" ".join(rule["expr"].split()) for rule in _alert_rules()]

    def some(*needles: str) -> bool:
        return any(all(n in expr for n in needles) for expr in exprs)

    assert some("increase(ojs_job_discarded_total", 'dead_letter="true"', "[10m]", "> 0")
    assert some("histogram_quantile(0.99", "ojs_schedule_lateness_seconds_bucket", "> 1")
    assert some("rabbitmq_detailed_queue_consumers", "== 0", "ojs\\\\.queue")
    assert some("ojs_amqp_connections_active < 2")
    assert some('up{job="ojs-amqp"} == 0')
    assert some("ojs_outbox_pending > 0")
    assert some("rate(ojs_lease_expired_total[5m])", "> 1")


def test_alerts_use_only_known_metrics() -> None:
    _assert_known_metrics([rule["expr"] for rule in _alert_rules()], "alerts.yml")


# --- Grafana -------------------------------------------------------------------------------


def test_dashboard_uses_only_known_metrics_and_covers_the_issue() -> None:
    used = _assert_known_metrics(_dashboard_exprs(_dashboard()), "ojs.json")
    required = {
        "ojs_job_enqueued_total",
        "ojs_job_completed_total",
        "ojs_job_failed_total",
        "ojs_job_duration_seconds_bucket",
        "ojs_job_queue_time_seconds_bucket",
        "ojs_queue_depth",
        "ojs_schedule_lateness_seconds_bucket",
        "ojs_job_discarded_total",
        "ojs_amqp_connections_active",
        "ojs_amqp_reconnections_total",
        "ojs_amqp_publish_confirm_latency_seconds_bucket",
    }
    assert required <= used, required - used


def test_dashboard_structure_and_datasource() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus"
    (source,) = _load(DATASOURCES)["datasources"]
    assert source["uid"] == "prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


def test_dashboard_provisioning_points_at_the_mounted_dashboards() -> None:
    (provider,) = _load(DASHBOARD_PROVIDERS)["providers"]
    grafana_mounts = _bind_mounts(_compose()["services"]["grafana"])
    assert grafana_mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert (
        grafana_mounts["/etc/grafana/provisioning/datasources"]
        == "./deploy/grafana/provisioning/datasources"
    )
    assert (
        grafana_mounts["/etc/grafana/provisioning/dashboards"]
        == "./deploy/grafana/provisioning/dashboards"
    )


# --- Kubernetes ----------------------------------------------------------------------------


def _k8s() -> dict[str, dict[str, Any]]:
    docs = _load_all(K8S)
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), "one object of each kind"
    return by_kind


def test_kubernetes_kinds() -> None:
    objects = _k8s()
    assert set(objects) == {
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }
    assert objects["ServiceMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"
    assert objects["PodDisruptionBudget"]["apiVersion"] == "policy/v1"


def test_kubernetes_deployment() -> None:
    objects = _k8s()
    deployment = objects["Deployment"]["spec"]
    assert deployment["replicas"] == 1  # SQLite: a single writer
    assert deployment["strategy"]["type"] == "Recreate"
    pod = deployment["template"]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    # The drain before stopping fits in the grace period Kubernetes gives.
    delay_s = int(objects["ConfigMap"]["data"]["OJS_SHUTDOWN_DELAY_MS"]) / 1000
    assert delay_s + 10 <= pod["terminationGracePeriodSeconds"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (data,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
    claim = volumes[data["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]

    config_maps = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert config_maps == [objects["ConfigMap"]["metadata"]["name"]]
    settings = objects["ConfigMap"]["data"]
    assert all(key.startswith("OJS_") for key in settings)
    assert settings["OJS_HTTP"].endswith(":8080")
    assert settings["OJS_STORE"].startswith("/data/")
    assert "OJS_TEST_MODE" not in settings


def test_kubernetes_service_monitor_and_pdb_select_the_pod() -> None:
    objects = _k8s()
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    assert container_ports[port["targetPort"]] == 8080

    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"

    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_kubernetes_schemas() -> None:
    import kubernetes_validate

    for doc in _load_all(K8S):
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD: no schema in kubernetes-validate
        kubernetes_validate.validate(doc, "1.29.0", strict=True)


# --- systemd -------------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(SYSTEMD.read_text())
    return parser


def test_systemd_unit_is_hardened() -> None:
    service = _unit()["Service"]
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    assert service["StateDirectory"] == "ojs-amqp"
    assert service["EnvironmentFile"] == "-/etc/ojs-amqp/env"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ExecStart"].split()[0].endswith("/ojs-amqp")
    assert service["ExecStart"].split()[1] == "serve"
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not IN_CI, reason="no systemd-analyze"
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at an executable that does
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", SYSTEMD.read_text(), flags=re.M)
    unit = tmp_path / SYSTEMD.name
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr  # unknown keys are only warnings


# --- external validators, when installed ---------------------------------------------------

_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not IN_CI, reason="no promtool on PATH"
)


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"


@_promtool
def test_promtool_check_rules() -> None:
    _run("promtool", "check", "rules", str(ALERTS))


@_promtool
def test_promtool_check_config() -> None:
    _run("promtool", "check", "config", str(PROMETHEUS))


@_promtool
def test_promtool_alert_unit_tests() -> None:
    _run("promtool", "test", "rules", str(ALERTS_TEST))


@_promtool
def test_promtool_parses_the_dashboard_queries(tmp_path: Path) -> None:
    """Each dashboard expression, with Grafana's variables filled in, as a recording rule."""
    exprs = [t["expr"] for p in _panels(_dashboard()) for t in p.get("targets", [])]
    substitutions = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
    rules = []
    for number, expr in enumerate(exprs):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\w+", ".*", expr)
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run("promtool", "check", "rules", str(path))


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_config() -> None:
    command = _compose_command()
    if command is None:
        if IN_CI:
            pytest.fail("docker-compose is missing: .ci/run installs it")
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    _run(*command, "-f", str(COMPOSE), "config", "-q")
