"""Every server's kustomization renders, validates against the Kubernetes schema of the pinned
MicroK8s channel, and holds the platform's policies (tests/deploy/policies.py)."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from . import policies
from .conftest import (
    NAMESPACE,
    REPO_ROOT,
    built_images,
    created_secrets,
    deploy_servers,
    kubernetes_version,
    kustomization,
    kustomize,
    node_selector_patch,
    referenced_files,
    registry,
)

FOLDERS = [s.folder for s in deploy_servers()]

# The Services of the platform by short DNS name, per server folder.
EXPECTED_SERVICES = {
    "server1-data": {"mysql-data", "airflow-api", "jupyter"},
    "server2-tracking": {"mysql-tracking", "minio", "mlflow"},
    "server3-serving": {"api", "ui", "prometheus", "pushgateway", "grafana", "locust"},
}
# Images whose containers keep state: it must sit on a PersistentVolumeClaim.
STATEFUL_IMAGES = ("docker.io/library/mysql:", "quay.io/minio/minio:", "docker.io/prom/prometheus:",
                   "quay.io/prometheus/pushgateway:", "docker.io/grafana/grafana:")


def test_kubernetes_version_is_covered_offline():
    """kubernetes-validate bundles the schema of the MicroK8s channel's Kubernetes version."""
    version = kubernetes_version()
    assert version.rsplit(".", 1)[0] in {v.rsplit(".", 1)[0] for v in all_versions()}, version


def test_every_folder_of_the_playbook_has_a_kustomization():
    assert sorted(FOLDERS) == sorted(EXPECTED_SERVICES)
    for folder in FOLDERS:
        assert (REPO_ROOT / folder / "k8s" / "kustomization.yaml").is_file()


@pytest.mark.parametrize("folder", FOLDERS)
def test_kustomization_renders(rendered, folder):
    objects = rendered[folder].objects
    assert objects, f"{folder} renders nothing"
    kinds = {o["kind"] for o in objects}
    assert {"Service", "ConfigMap"} <= kinds
    assert kinds & {"Deployment", "StatefulSet"}


@pytest.mark.parametrize("folder", FOLDERS)
def test_objects_validate_against_the_kubernetes_schema(rendered, folder):
    version = kubernetes_version()
    failures = []
    for obj in rendered[folder].objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{policies.name_of(obj)}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            failures.append(f"{policies.name_of(obj)}: {exc.message}")
    assert not failures, "\n".join(failures)


def listed_kustomizations(folder: str) -> list[Path]:
    """The server folder's k8s/ and every kustomization folder it lists under resources:."""
    k8s = REPO_ROOT / folder / "k8s"
    found = [k8s]
    for entry in kustomization(folder).get("resources") or []:
        path = (k8s / entry).resolve()
        if path.is_dir():
            found.append(path)
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_kustomization_conventions(folder):
    """labels (on templates, not on claim templates) rather than commonLabels, one namespace, images
    set by the images transformer, generator files in or below each kustomization's own folder (so
    the default load restrictor accepts them) and inside the server folder."""
    kust = kustomization(folder)
    assert "commonLabels" not in kust
    assert kust.get("namespace") == NAMESPACE
    (entry,) = kust.get("labels") or []
    assert not entry.get("includeTemplates"), "includeTemplates also labels volumeClaimTemplates (immutable)"
    assert {(f["kind"], f["path"]) for f in entry["fields"]} >= {
        (kind, "spec/template/metadata/labels") for kind in ("Deployment", "StatefulSet", "Job")}
    built = built_images()
    for image in kust.get("images") or []:
        assert image["newName"] == f"{registry()}/{image['name']}"
        assert image["name"] in built
    for directory in listed_kustomizations(folder):
        assert directory.is_relative_to(REPO_ROOT / folder), f"{folder} lists {directory}, outside its folder"
        for rel in referenced_files(yaml.safe_load((directory / "kustomization.yaml").read_text())):
            resolved = (directory / rel).resolve()
            assert resolved.is_relative_to(directory), f"{directory} reads {rel}, outside its own folder"
            assert resolved.is_file(), f"{directory} reads {rel}, which does not exist"


@pytest.mark.parametrize("folder", FOLDERS)
def test_plain_kubectl_kustomize_renders_the_repository_folder(folder):
    """`kubectl kustomize server*/k8s` as a user types it (no --load-restrictor), in the checkout."""
    result = kustomize(REPO_ROOT / folder / "k8s")
    assert result.returncode == 0, result.stderr
    assert [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_nothing_asks_for_the_load_restrictor_flag():
    """The playbook, the docs and the tests render with plain `kubectl kustomize`."""
    roots = [REPO_ROOT / "ansible", REPO_ROOT / "README.md", REPO_ROOT / "tests" / "e2e"]
    roots += [REPO_ROOT / s.folder for s in deploy_servers()]
    offenders = []
    for root in roots:
        for path in ([root] if root.is_file() else root.rglob("*")):
            if path.is_file() and path.suffix in (".yml", ".yaml", ".md", ".py", ".j2", ".sh") \
                    and "load-restrictor" in path.read_text(errors="ignore"):
                offenders.append(str(path.relative_to(REPO_ROOT)))
    assert not offenders, offenders


@pytest.mark.parametrize("folder", FOLDERS)
def test_node_selector_is_set_once_per_folder(folder, node_label_key, node_labels):
    """One patch without a name target sets the node selector; no manifest file repeats it."""
    server = next(s for s in deploy_servers() if s.folder == folder)
    assert node_selector_patch(folder) == {node_label_key: node_labels[server.group]}
    patch = next(p for p in kustomization(folder)["patches"] if "nodeSelector" in p["patch"])
    assert "name" not in patch["target"]
    assert set(re.split(r"[|()]", patch["target"]["kind"])) - {""} >= {"Deployment", "StatefulSet", "Job"}
    for manifest in (REPO_ROOT / folder / "k8s").glob("*.y*ml"):
        if manifest.name != "kustomization.yaml":
            assert "nodeSelector" not in manifest.read_text(), f"{manifest.name} sets a nodeSelector itself"


@pytest.mark.parametrize("folder", FOLDERS)
def test_pod_templates_carry_their_folders_node_selector(rendered, folder, node_label_key, node_labels):
    server = rendered[folder].server
    objects = rendered[folder].objects
    assert list(policies.pod_templates(objects))
    assert policies.check_node_selector(objects, node_label_key, node_labels[server.group]) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_containers_have_requests_limits_and_probes(rendered, folder):
    assert policies.check_resources_and_probes(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_pods_run_as_non_root(rendered, folder):
    assert policies.check_security_contexts(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_objects_carry_app_kubernetes_io_labels(rendered, folder):
    assert policies.check_labels(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_everything_is_in_the_platforms_namespace(rendered, folder):
    assert policies.check_namespace(rendered[folder].objects, NAMESPACE) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_plaintext_password(rendered, folder):
    assert policies.check_no_plaintext_secrets(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_secrets_used_are_created_by_the_playbook(rendered, folder):
    objects = rendered[folder].objects
    assert list(policies.secret_references(objects)), f"{folder} uses no Secret"
    assert policies.check_secret_refs(objects, created_secrets()) == []


def test_every_secret_the_playbook_creates_is_used(all_objects):
    used = {name for _, name, _ in policies.secret_references(all_objects)}
    assert set(created_secrets()) == used


@pytest.mark.parametrize("folder", FOLDERS)
def test_services_select_pods(rendered, folder):
    assert policies.check_services_select_pods(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_probes_and_services_point_at_declared_ports(rendered, folder):
    assert policies.check_ports(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_config_maps_claims_and_scale_targets_exist(rendered, folder):
    assert policies.check_config_refs(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_state_lives_on_persistent_volume_claims(rendered, folder):
    assert policies.check_state_on_volumes(rendered[folder].objects, STATEFUL_IMAGES) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_images_are_built_from_a_dockerfile_or_pinned(rendered, folder):
    objects = rendered[folder].objects
    assert policies.check_images(objects, registry(), built_images(), REPO_ROOT) == []
    server = rendered[folder].server
    ours = {policies.split_image(c["image"])[0].removeprefix(registry() + "/")
            for pod in policies.pod_templates(objects) for c in pod.all_containers
            if c["image"].startswith(registry() + "/")}
    assert ours == set(server.images), "the playbook's image list for this folder is out of date"


@pytest.mark.parametrize("folder", FOLDERS)
def test_images_name_their_registry_are_pinned_and_still_served(rendered, folder):
    assert policies.check_image_sources(rendered[folder].objects) == []


@pytest.mark.parametrize("folder", FOLDERS)
def test_volume_claim_templates_carry_no_labels(rendered, folder):
    assert policies.check_claim_templates_unlabelled(rendered[folder].objects) == []


def test_the_s3_store_is_swappable(all_objects, rendered):
    """Only the MinIO manifest (MinIO, its Service, ConfigMap object-store) and the bucket Job know the
    S3 store is MinIO; MLflow reads the endpoint from ConfigMap object-store and the keys from Secret
    object-store."""
    assert policies.check_store_is_swappable(all_objects, "minio", {"minio", "minio-bucket"}) == []
    objects = rendered["server2-tracking"].objects
    (endpoint,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "object-store"]
    assert endpoint["data"]["MLFLOW_S3_ENDPOINT_URL"].startswith("http")
    mlflow = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    (container,) = mlflow["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": "object-store"}} in container["envFrom"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
            if e["name"].startswith("AWS_")}
    assert keys == {"AWS_ACCESS_KEY_ID": "object-store", "AWS_SECRET_ACCESS_KEY": "object-store"}


@pytest.mark.parametrize("folder", FOLDERS)
def test_services_have_their_dns_names(rendered, folder):
    services = {o["metadata"]["name"] for o in policies.of_kind(rendered[folder].objects, "Service")}
    assert EXPECTED_SERVICES[folder] <= services


def test_settings_address_services_by_cluster_dns_names(all_objects):
    services = policies.of_kind(all_objects, "Service")
    assert list(policies.service_addresses(all_objects))
    assert policies.check_service_addresses(all_objects, services, NAMESPACE) == []


def test_node_ports_are_unique_and_in_range(all_objects):
    node_ports = [p["nodePort"] for s in policies.of_kind(all_objects, "Service")
                  for p in s["spec"].get("ports", []) if "nodePort" in p]
    assert len(node_ports) == len(set(node_ports))
    assert all(30000 <= p <= 32767 and p != 32000 for p in node_ports)  # 32000: the registry add-on


def test_the_api_scales_on_cpu_and_leaves_replicas_to_the_autoscaler(rendered):
    objects = rendered["server3-serving"].objects
    (hpa,) = policies.of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    api = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "api")
    assert "replicas" not in api["spec"]


def test_airflow_components_share_their_secrets_and_migrate_first(rendered):
    """The JWT secret (and the rest of Secret "airflow") reaches api-server, scheduler and
    dag-processor alike; `airflow db migrate` runs before the others start; the passwords file is
    copied from the Secret into a writable volume."""
    objects = rendered["server1-data"].objects
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for name in ("airflow-api", "airflow-scheduler", "airflow-dag-processor"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "airflow"}} in container["envFrom"], name
        env = {e["name"]: e for e in container["env"]}
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["value"].startswith("mysql+mysqldb://airflow:$(")
    assert "AIRFLOW__API_AUTH__JWT_SECRET" in created_secrets()["airflow"]
    api_spec = deployments["airflow-api"]["spec"]["template"]["spec"]
    init = [c["command"] for c in api_spec["initContainers"]]
    assert ["airflow", "db", "migrate"] in init
    for name in ("airflow-scheduler", "airflow-dag-processor"):
        commands = [c["command"] for c in deployments[name]["spec"]["template"]["spec"]["initContainers"]]
        assert any(c[:3] == ["airflow", "db", "check-migrations"] for c in commands), name
    api_env = {e["name"]: e.get("value") for e in api_spec["containers"][0]["env"]}
    passwords_file = api_env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
    mounts = {m["mountPath"]: m["name"] for m in api_spec["containers"][0]["volumeMounts"]}
    volume = next(v for v in api_spec["volumes"] if v["name"] == mounts[passwords_file.rsplit("/", 1)[0]])
    assert "emptyDir" in volume


def test_airflow_config_map_comes_from_the_settings_file(rendered):
    config = next(o for o in rendered["server1-data"].objects
                  if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("airflow-config-"))
    expected = {}
    for line in (REPO_ROOT / "server1-data" / "config" / "airflow.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            expected[k.strip()] = v.strip()
    assert config["data"] == expected


def test_monitoring_config_maps_carry_the_repository_files(rendered):
    """Prometheus' and Grafana's ConfigMaps are generated from server3-serving/monitoring, every
    dashboard of monitoring/grafana/dashboards included (kustomize cannot glob: listed by name)."""
    render = rendered["server3-serving"]
    by_name = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in render.objects if o["kind"] == "ConfigMap"}
    sources = {
        ("prometheus-config", "prometheus.yml"): "monitoring/prometheus.yml",
        ("prometheus-config", "rules.yml"): "monitoring/rules.yml",
        ("grafana-datasources", "prometheus.yml"): "monitoring/grafana/datasources/prometheus.yml",
        ("grafana-datasources", "cleandata.yml"): "monitoring/grafana/datasources/cleandata.yml",
        ("grafana-dashboard-provider", "provider.yml"): "monitoring/grafana/dashboards/provider.yml",
    }
    dashboards = sorted((REPO_ROOT / "server3-serving" / "monitoring" / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    sources |= {("grafana-dashboards", d.name): f"monitoring/grafana/dashboards/{d.name}" for d in dashboards}
    for (config_map, key), rel in sources.items():
        assert key in by_name[config_map]["data"], (config_map, key)
        assert by_name[config_map]["data"][key] == (REPO_ROOT / "server3-serving" / rel).read_text()
    assert set(by_name["grafana-dashboards"]["data"]) == {d.name for d in dashboards}


def _monitoring_file(rel: str):
    path = REPO_ROOT / "server3-serving" / "monitoring" / rel
    if not path.exists():
        pytest.skip(f"server3-serving/monitoring/{rel} is not written yet")
    return yaml.safe_load(path.read_text())


def test_prometheus_scrapes_existing_services(all_objects):
    config = _monitoring_file("prometheus.yml")
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]}
                for s in policies.of_kind(all_objects, "Service")}
    targets = [t for job in config.get("scrape_configs", []) for static in job.get("static_configs", [])
               for t in static.get("targets", [])]
    for job in config.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            targets += [f"{name}:{sd['port']}" for name in sd.get("names", [])]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        name = host.split(".")[0]
        if name in ("localhost", "127"):
            continue
        assert name in services and int(port) in services[name], f"scrape target {target} is no Service port"
    for rule_file in config.get("rule_files", []):
        assert rule_file in ("rules.yml", "/etc/prometheus/rules.yml"), "rules are mounted at /etc/prometheus/rules.yml"


def test_grafana_provisioning_points_at_the_mounted_paths():
    datasources = _monitoring_file("grafana/datasources/prometheus.yml")
    urls = [d.get("url", "") for d in datasources.get("datasources", [])]
    assert any(re.match(r"^http://prometheus(\.readmit(\.svc(\.cluster\.local)?)?)?:9090/?$", u) for u in urls), urls
    provider = _monitoring_file("grafana/dashboards/provider.yml")
    paths = [p.get("options", {}).get("path") for p in provider.get("providers", [])]
    assert paths and all(p and p.rstrip("/") == "/etc/grafana/dashboards" for p in paths), paths


# -- secure by default: exposure, credentials, TLS -----------------------------------------------------

def test_no_node_port_without_a_reason_in_the_readme(all_objects):
    documented = policies.readme_node_ports((REPO_ROOT / "README.md").read_text())
    assert policies.check_node_ports_documented(all_objects, documented) == []
    # the table lists only Services that exist and open node ports (a stale row would mislead)
    assert set(documented) <= set(policies.node_ports(all_objects))


def test_no_lifecycle_or_admin_api_flag(all_objects):
    assert policies.check_no_dangerous_flags(all_objects) == []


def test_streamlit_hides_error_details(all_objects):
    streamlit = [c for pod in policies.pod_templates(all_objects) for c in pod.containers
                 if "streamlit" in (c.get("command") or [""])[0]]
    assert streamlit, "no Streamlit container found: the check below would prove nothing"
    assert policies.check_streamlit_hides_error_details(all_objects) == []


def test_every_component_asks_for_credentials(all_objects):
    components = {pod.labels.get("app.kubernetes.io/name") for pod in policies.pod_templates(all_objects)}
    assert set(policies.CREDENTIALS) <= components
    assert policies.check_components_ask_for_credentials(all_objects) == []


def test_people_reach_the_pages_through_the_ingress_over_tls(all_objects):
    ingresses = policies.of_kind(all_objects, "Ingress")
    backends = {path["backend"]["service"]["name"] for i in ingresses for r in i["spec"]["rules"]
                for path in r["http"]["paths"]}
    assert backends == {"ui", "grafana", "mlflow", "airflow-api", "jupyter", "locust", "api"}
    assert "prometheus" not in backends and "minio" not in backends and "pushgateway" not in backends
    assert policies.check_ingresses_use_tls(all_objects) == []


def test_the_api_ingress_exposes_only_what_callers_need(rendered):
    (api,) = [i for i in policies.of_kind(rendered["server3-serving"].objects, "Ingress") if i["metadata"]["name"] == "api"]
    paths = {p["path"] for r in api["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths == {"/predict", "/model", "/docs", "/openapi.json"}  # not /health, /ready, /metrics


def _config_map(rendered, folder: str, prefix: str) -> dict[str, str]:
    (cm,) = [o for o in rendered[folder].objects
             if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix)]
    return cm["data"]


def _aliases(settings_class) -> dict[str, str]:
    return {f.validation_alias: name for name, f in settings_class.model_fields.items() if f.validation_alias}


def _embedded_env() -> dict[str, str]:
    lines = (REPO_ROOT / ".env.embedded").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_tuning_settings_are_written_out_with_the_codes_defaults(rendered):
    """The promotion gate's and the API's overload and history-lookup settings appear in the cluster's
    ConfigMap / pod env and in .env.embedded with the values the code defaults to, so tuning one place is visible and a
    typo in a name (silently ignored by pydantic-settings) fails here."""
    from readmit_data.settings import DataSettings
    from readmit_serving.settings import ServingSettings

    data = _config_map(rendered, "server1-data", "data-settings")
    data_aliases = _aliases(DataSettings)
    assert set(data) <= set(data_aliases), set(data) - set(data_aliases)
    gate = {"PROMOTION_MIN_DELTA", "PROMOTION_CONFIDENCE", "PROMOTION_BOOTSTRAP_SAMPLES",
            "PROMOTION_MAX_SUBGROUP_AUC_DROP", "PROMOTION_MAX_CALIBRATION_WORSENING", "MODEL_CARD_MIN_GROUP_ROWS",
            "MODEL_CARD_BOOTSTRAP_SAMPLES", "DRIFT_SHARE_THRESHOLD", "DRIFT_REFERENCE_ROWS", "ARRIVAL_MAX_AUC_DROP",
            "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"}
    assert gate <= set(data)
    defaults = DataSettings.model_construct()
    for alias in gate:
        assert float(data[alias]) == float(getattr(defaults, data_aliases[alias])), alias

    (api,) = [d for d in policies.of_kind(rendered["server3-serving"].objects, "Deployment")
              if d["metadata"]["name"] == "api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    serving_aliases = _aliases(ServingSettings)
    overload = {"MAX_IN_FLIGHT", "MAX_IN_FLIGHT_BATCH", "MAX_QUEUED_BATCH_ROWS", "BATCH_SLICE_ROWS",
                "REQUEST_DEADLINE_MS", "SHED_RETRY_AFTER_MS", "INFERENCE_STUCK_SECONDS",
                "HISTORY_TIMEOUT_MS", "HISTORY_CACHE_SECONDS",
                "PREDICTION_LOG_BUFFER_ROWS", "PREDICTION_LOG_BATCH_ROWS", "PREDICTION_LOG_FLUSH_MS",
                "TREES_COMPILE_MAX_NODES"}
    serving_defaults = ServingSettings.model_construct()
    embedded = _embedded_env()
    assert literal["TREES_COMPILE"] == embedded["TREES_COMPILE"] == "true" and serving_defaults.trees_compile
    # POST /model/reload: the team's own key only, in both (the code's default); the UI and Locust may not
    assert literal["MODEL_RELOAD_CALLERS"] == embedded["MODEL_RELOAD_CALLERS"] == "hospital"
    assert ServingSettings(API_KEYS="a:" + "k" * 32).model_reload_callers == {"hospital"}
    for alias in overload:
        default = float(getattr(serving_defaults, serving_aliases[alias]))
        assert float(literal[alias]) == default, alias
        assert float(embedded[alias]) == default, alias
    for alias in gate - {a for a in gate if a.startswith("MLFLOW_HTTP")}:
        assert float(embedded[alias]) == float(getattr(defaults, data_aliases[alias])), alias
    # the API's model watcher keeps its own, shorter MLflow limits: the embedded file must not override them
    assert not {a for a in embedded if a.startswith("MLFLOW_HTTP")}
    # monitoring's prediction-log settings (issue 16): written out in the cluster with the code's defaults
    assert data["DRIFT_EXCLUDED_CALLERS"] == embedded["DRIFT_EXCLUDED_CALLERS"] == defaults.drift_excluded_callers
    for alias in ("DRIFT_PREDICTION_HOURS", "PREDICTION_LOG_RETENTION_DAYS"):
        assert alias in data_aliases, f"{alias} is no DataSettings field"
        assert float(data[alias]) == float(getattr(defaults, data_aliases[alias])), alias


# -- model monitoring (issue 16): the Pushgateway on node 3 --------------------------------------------------


def _workload(rendered, folder: str, kind: str, name: str) -> dict:
    (found,) = [o for o in policies.of_kind(rendered[folder].objects, kind) if o["metadata"]["name"] == name]
    return found


def test_the_pushgateway_is_pinned_read_only_and_keeps_the_last_push_on_a_volume(rendered):
    """quay.io's image at a release tag; a read-only root file system; --persistence.file on its claim (so a
    restart still serves the last check); one pod at a time (Recreate: never two writers of that file); its
    admin and lifecycle APIs off; probes on /-/healthy and /-/ready."""
    deployment = _workload(rendered, "server3-serving", "Deployment", "pushgateway")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert re.fullmatch(r"quay\.io/prometheus/pushgateway:v\d+\.\d+\.\d+", container["image"]), container["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    args = dict(a.split("=", 1) for a in container["args"])
    assert not {"--web.enable-admin-api", "--web.enable-lifecycle"} & set(args)
    assert args["--web.listen-address"] == ":9091"
    persistence = Path(args["--persistence.file"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (volume,) = [v for v in spec["volumes"] if v["name"] == mounts[str(persistence.parent)]]
    claim_name = volume["persistentVolumeClaim"]["claimName"]
    claim = _workload(rendered, "server3-serving", "PersistentVolumeClaim", claim_name)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    service = _workload(rendered, "server3-serving", "Service", "pushgateway")
    assert [p["port"] for p in service["spec"]["ports"]] == [9091] and "type" not in service["spec"]


def test_prometheus_scrapes_the_pushgateway_with_its_pushed_labels_and_node_1_pushes_there(rendered):
    """honor_labels: the pushed job (readmit_monitor) and labels (model_name, model_version, population) are what
    the alert rules and the dashboard select on. Node 1's PUSHGATEWAY_URL names the Service (one namespace)."""
    config = _monitoring_file("prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert job["honor_labels"] is True
    assert [t for s in job["static_configs"] for t in s["targets"]] == ["pushgateway:9091"]
    data = _config_map(rendered, "server1-data", "data-settings")
    assert data["PUSHGATEWAY_URL"] == "http://pushgateway:9091"
