"""Each policy check fails on a manifest that breaks it (and passes on a sound one), so the
tests on the real manifests (test_manifests.py) cannot pass by checking nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest

from . import policies
from .conftest import kubernetes_version

KEY = "readmit.io/node"


def sound_objects() -> list[dict]:
    """A small platform that satisfies every policy: a Deployment, its Service, a ConfigMap, a PVC."""
    labels = {"app.kubernetes.io/name": "web", "app.kubernetes.io/component": "ui",
              "app.kubernetes.io/part-of": "readmit"}
    return [
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "readmit", "labels": dict(labels)},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "web"}},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "nodeSelector": {KEY: "serving"},
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                        "containers": [{
                            "name": "web",
                            "image": "localhost:32000/readmit-serving:abc",
                            "command": ["serve", "--upstream", "http://db:3306"],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "envFrom": [{"configMapRef": {"name": "settings"}}],
                            "env": [
                                {"name": "DB_PASSWORD",
                                 "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                                {"name": "DB_URL", "value": "mysql+pymysql://app:$(DB_PASSWORD)@db:3306/app"},
                                {"name": "PASSWORDS_FILE", "value": "/etc/app/passwords.json"},
                            ],
                            "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}},
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                          "limits": {"cpu": "1", "memory": "256Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False},
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        }],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "readmit", "labels": dict(labels)},
            "spec": {"selector": {"app.kubernetes.io/name": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "namespace": "readmit", "labels": dict(labels)},
            "spec": {"selector": {"app.kubernetes.io/name": "web"}, "ports": [{"port": 3306, "targetPort": 8000}]},
        },
        {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "readmit",
                         "labels": {"app.kubernetes.io/part-of": "readmit"}},
            "data": {"API_URL": "http://web:80", "USERS": "admin:admin",
                     "init.sql": "CREATE USER 'a' IDENTIFIED BY '${A_PASSWORD}';"},
        },
        {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "web-data", "namespace": "readmit", "labels": dict(labels)},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    ]


SECRETS = {"db": {"password"}}
BUILT = {"readmit-serving": "server3-serving/Dockerfile"}


def deployment(objs):
    return objs[0]


def container(objs):
    return objs[0]["spec"]["template"]["spec"]["containers"][0]


def pod_spec(objs):
    return objs[0]["spec"]["template"]["spec"]


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "server3-serving").mkdir()
    (tmp_path / "server3-serving" / "Dockerfile").write_text("FROM python:3.11-slim\nUSER 10001\n")
    return tmp_path


def test_the_sound_objects_pass_every_policy(repo):
    objs = sound_objects()
    assert policies.check_node_selector(objs, KEY, "serving") == []
    assert policies.check_resources_and_probes(objs) == []
    assert policies.check_security_contexts(objs) == []
    assert policies.check_labels(objs) == []
    assert policies.check_namespace(objs, "readmit") == []
    assert policies.check_no_plaintext_secrets(objs) == []
    assert policies.check_secret_refs(objs, SECRETS) == []
    assert policies.check_services_select_pods(objs) == []
    assert policies.check_ports(objs) == []
    assert policies.check_config_refs(objs) == []
    assert policies.check_images(objs, "localhost:32000", BUILT, repo) == []
    assert policies.check_image_sources(objs) == []
    assert policies.check_claim_templates_unlabelled(objs) == []
    assert policies.check_store_is_swappable(objs, "minio", {"minio"}) == []
    assert policies.check_service_addresses(objs, policies.of_kind(objs, "Service"), "readmit") == []
    for obj in objs:
        kubernetes_validate.validate(obj, kubernetes_version(), strict=True)


# -- node selector ----------------------------------------------------------------------------------


def test_a_pod_template_without_its_node_selector_fails():
    objs = sound_objects()
    del pod_spec(objs)["nodeSelector"]
    assert policies.check_node_selector(objs, KEY, "serving")


def test_a_pod_template_on_another_node_fails():
    objs = sound_objects()
    pod_spec(objs)["nodeSelector"] = {KEY: "data"}
    assert policies.check_node_selector(objs, KEY, "serving")


@pytest.mark.parametrize("kind", ["Job", "StatefulSet", "DaemonSet", "CronJob", "Pod"])
def test_every_kind_of_pod_template_is_checked_for_its_node_selector(kind):
    template = {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}}
    obj = {"kind": kind, "metadata": {"name": "w"}}
    if kind == "CronJob":
        obj["spec"] = {"jobTemplate": {"spec": {"template": template}}}
    elif kind == "Pod":
        obj.update(template)
    else:
        obj["spec"] = {"template": template}
    assert policies.check_node_selector([obj], KEY, "serving")


# -- containers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["limits", "requests"])
def test_a_container_without_limits_or_requests_fails(section):
    objs = sound_objects()
    del container(objs)["resources"][section]
    assert policies.check_resources_and_probes(objs)


def test_a_container_without_a_memory_limit_fails():
    objs = sound_objects()
    del container(objs)["resources"]["limits"]["memory"]
    assert policies.check_resources_and_probes(objs)


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe"])
def test_a_container_without_a_probe_fails(probe):
    objs = sound_objects()
    del container(objs)[probe]
    assert policies.check_resources_and_probes(objs)


def test_an_init_container_without_limits_fails():
    objs = sound_objects()
    pod_spec(objs)["initContainers"] = [{"name": "init", "image": "x:1"}]
    assert policies.check_resources_and_probes(objs)


def test_a_job_needs_limits_but_no_probes():
    objs = sound_objects()
    template = copy.deepcopy(deployment(objs)["spec"]["template"])
    job = {"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": template}}
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    del job_container["livenessProbe"], job_container["readinessProbe"]
    assert policies.check_resources_and_probes([job]) == []
    del job_container["resources"]
    assert policies.check_resources_and_probes([job])


@pytest.mark.parametrize("change", ["root", "no-non-root", "escalation", "privileged"])
def test_a_root_or_privileged_container_fails(change):
    objs = sound_objects()
    if change == "root":
        pod_spec(objs)["securityContext"]["runAsUser"] = 0
    elif change == "no-non-root":
        del pod_spec(objs)["securityContext"]["runAsNonRoot"]
    elif change == "escalation":
        del container(objs)["securityContext"]["allowPrivilegeEscalation"]
    else:
        container(objs)["securityContext"]["privileged"] = True
    assert policies.check_security_contexts(objs)


def test_missing_app_kubernetes_io_labels_fail():
    objs = sound_objects()
    del deployment(objs)["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    assert policies.check_labels(objs)
    objs = sound_objects()
    del objs[1]["metadata"]["labels"]["app.kubernetes.io/part-of"]
    assert policies.check_labels(objs)


def test_an_object_outside_the_namespace_fails():
    objs = sound_objects()
    objs[1]["metadata"]["namespace"] = "default"
    assert policies.check_namespace(objs, "readmit")


# -- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [
    {"name": "MYSQL_ROOT_PASSWORD", "value": "hunter2hunter2"},
    {"name": "AIRFLOW__CORE__FERNET_KEY", "value": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="},
    {"name": "AWS_SECRET_ACCESS_KEY", "value": "minio123"},
    {"name": "DB_URL", "value": "mysql+pymysql://app:hunter2@db:3306/app"},
    {"name": "JUPYTER_TOKEN", "value": "abc"},
])
def test_a_plaintext_password_in_the_environment_fails(env):
    objs = sound_objects()
    container(objs)["env"].append(env)
    assert policies.check_no_plaintext_secrets(objs)


@pytest.mark.parametrize("arg", ["--password=hunter2", "-phunter2", "postgresql://u:hunter2@db:5432/x"])
def test_a_plaintext_password_in_arguments_fails(arg):
    objs = sound_objects()
    container(objs)["args"] = [arg]
    assert policies.check_no_plaintext_secrets(objs)


@pytest.mark.parametrize("data", [
    {"MINIO_ROOT_PASSWORD": "minio123"},
    {"airflow.env": "AIRFLOW__CORE__FERNET_KEY=abcdef\n"},
    {"grafana.ini": "admin_password: hunter2\n"},
    {"init.sql": "CREATE USER 'a'@'%' IDENTIFIED WITH mysql_native_password BY 'hunter2';"},
    {"MLFLOW_BACKEND_STORE_URI": "mysql+pymysql://mlflow:hunter2@mysql-tracking:3306/mlflow"},
])
def test_a_plaintext_password_in_a_config_map_fails(data):
    objs = sound_objects()
    objs[3]["data"].update(data)
    assert policies.check_no_plaintext_secrets(objs)


def test_a_secret_object_in_the_manifests_fails():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": "x"}}
    objs = sound_objects() + [secret]
    assert policies.check_no_plaintext_secrets(objs)


def test_references_and_paths_are_not_passwords():
    assert not policies.plaintext_in_text("PASSWORD=$(DB_PASSWORD)\nTOKEN_FILE=/run/token\nURL=http://u:${P}@h:1/x")
    # Grafana's provisioning files: the environment's value, or a mounted file's
    assert not policies.plaintext_in_text("    password: $__env{GRAFANA_READER_DB_PASSWORD}\n"
                                          "    password: $__file{/etc/secrets/password}\n")
    for literal in ("password: $__env{A}hunter2", "password: $__envy{A}", "password: $__env{A B}"):
        assert policies.plaintext_in_text(literal), literal


@pytest.mark.parametrize("where", ["secretKeyRef-name", "secretKeyRef-key", "envFrom", "volume"])
def test_a_secret_the_playbook_does_not_create_fails(where):
    objs = sound_objects()
    if where == "secretKeyRef-name":
        container(objs)["env"][0]["valueFrom"]["secretKeyRef"]["name"] = "nope"
    elif where == "secretKeyRef-key":
        container(objs)["env"][0]["valueFrom"]["secretKeyRef"]["key"] = "nope"
    elif where == "envFrom":
        container(objs)["envFrom"].append({"secretRef": {"name": "nope"}})
    else:
        pod_spec(objs)["volumes"].append({"name": "s", "secret": {"secretName": "nope"}})
    assert policies.check_secret_refs(objs, SECRETS)


# -- services and ports ----------------------------------------------------------------------------


def test_a_service_that_selects_no_pod_fails():
    objs = sound_objects()
    objs[1]["spec"]["selector"] = {"app.kubernetes.io/name": "wbe"}
    assert policies.check_services_select_pods(objs)


def test_a_service_without_selector_fails():
    objs = sound_objects()
    del objs[1]["spec"]["selector"]
    assert policies.check_services_select_pods(objs)


@pytest.mark.parametrize("target", ["metrics", 9999])
def test_a_service_target_port_no_container_exposes_fails(target):
    objs = sound_objects()
    objs[1]["spec"]["ports"][0]["targetPort"] = target
    assert policies.check_ports(objs)


def test_a_service_port_without_target_defaults_to_its_port():
    objs = sound_objects()
    del objs[2]["spec"]["ports"][0]["targetPort"]  # port 3306: no container declares it
    assert policies.check_ports(objs)


@pytest.mark.parametrize("probe, port", [("livenessProbe", "web"), ("readinessProbe", 8001)])
def test_a_probe_on_an_undeclared_port_fails(probe, port):
    objs = sound_objects()
    container(objs)[probe]["httpGet"]["port"] = port
    assert policies.check_ports(objs)


def test_a_tcp_startup_probe_on_an_undeclared_port_fails():
    objs = sound_objects()
    container(objs)["startupProbe"] = {"tcpSocket": {"port": 5432}}
    assert policies.check_ports(objs)


@pytest.mark.parametrize("change", ["config-map", "claim", "mount", "scale-target"])
def test_a_reference_to_a_missing_object_fails(change):
    objs = sound_objects()
    if change == "config-map":
        container(objs)["envFrom"][0]["configMapRef"]["name"] = "nope"
    elif change == "claim":
        pod_spec(objs)["volumes"][0]["persistentVolumeClaim"]["claimName"] = "nope"
    elif change == "mount":
        container(objs)["volumeMounts"].append({"name": "nope", "mountPath": "/x"})
    else:
        objs.append({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
                     "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "nope"}}})
    assert policies.check_config_refs(objs)


def test_state_outside_a_volume_claim_fails():
    objs = sound_objects()
    container(objs)["image"] = "mysql:8.4.6"
    assert policies.check_state_on_volumes(objs, ("mysql:",)) == []
    container(objs)["volumeMounts"] = []
    assert policies.check_state_on_volumes(objs, ("mysql:",))
    # The same container in a Job (a client run to completion) keeps no state: not asked.
    job = copy.deepcopy(objs[0])
    job.update({"apiVersion": "batch/v1", "kind": "Job"})
    assert policies.check_state_on_volumes([job], ("mysql:",)) == []


@pytest.mark.parametrize("url", ["http://mlfow:5000", "http://web:8080", "mysql+pymysql://a:$(P)@dbb:3306/x",
                                 "http://web.readmit.svc.cluster.local:81"])
def test_an_address_that_is_no_service_port_fails(url):
    objs = sound_objects()
    objs[3]["data"]["API_URL"] = url
    assert policies.check_service_addresses(objs, policies.of_kind(objs, "Service"), "readmit")


def test_addresses_outside_the_cluster_are_not_checked():
    objs = sound_objects()
    objs[3]["data"]["API_URL"] = "https://archive.ics.uci.edu:443/x http://localhost:5000 http://10.0.0.1:80"
    assert policies.check_service_addresses(objs, policies.of_kind(objs, "Service"), "readmit") == []


# -- images ----------------------------------------------------------------------------------------


def test_an_image_without_a_dockerfile_fails(repo):
    objs = sound_objects()
    missing = {"readmit-serving": "server3-serving/Dockerfile.missing"}
    assert policies.check_images(objs, "localhost:32000", missing, repo)


def test_an_image_the_playbook_does_not_build_fails(repo):
    objs = sound_objects()
    container(objs)["image"] = "localhost:32000/readmit-other:abc"
    assert policies.check_images(objs, "localhost:32000", BUILT, repo)


@pytest.mark.parametrize("image", ["grafana/grafana", "grafana/grafana:latest", "readmit-serving:dev"])
def test_an_unpinned_or_unmapped_image_fails(repo, image):
    objs = sound_objects()
    container(objs)["image"] = image
    assert policies.check_images(objs, "localhost:32000", BUILT, repo)


def test_pinned_third_party_images_pass(repo):
    objs = sound_objects()
    for image in ("docker.io/library/mysql:8.4.6", "docker.io/prom/prometheus:v3.5.0",
                  "quay.io/minio/minio@sha256:" + "0" * 64):
        container(objs)["image"] = image
        assert policies.check_images(objs, "localhost:32000", BUILT, repo) == [], image


@pytest.mark.parametrize("image", [
    "mysql:8.4.6",                       # Docker Hub implied: the registry is not named
    "grafana/grafana:12.1.1",
    "docker.io/grafana/grafana",         # no tag
    "docker.io/grafana/grafana:latest",
    "docker.io/minio/minio:RELEASE.2025-04-22T22-12-26Z",   # gone from Docker Hub
    "minio/minio:RELEASE.2025-04-22T22-12-26Z",
    "k8s.gcr.io/pause:3.9",              # frozen registry
    "docker.io/bitnami/redis:7.2",
])
def test_an_image_without_registry_pin_or_from_a_gone_repository_fails(image):
    objs = sound_objects()
    container(objs)["image"] = image
    assert policies.check_image_sources(objs)


@pytest.mark.parametrize("image", [
    "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z",
    "docker.io/library/mysql:8.4.6",
    "registry.k8s.io/pause:3.10",
    "docker.io/prom/prometheus@sha256:" + "0" * 64,
    "localhost:32000/readmit-serving:0123abcd",
])
def test_images_with_registry_and_pin_from_a_live_repository_pass(image):
    objs = sound_objects()
    container(objs)["image"] = image
    assert policies.check_image_sources(objs) == []


def statefulset(claim_labels: dict | None) -> dict:
    template = {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    if claim_labels is not None:
        template["metadata"]["labels"] = claim_labels
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"volumeClaimTemplates": [template]}}


def test_a_labelled_volume_claim_template_fails():
    assert policies.check_claim_templates_unlabelled([statefulset({"readmit.io/server": "server2-tracking"})])
    assert policies.check_claim_templates_unlabelled([statefulset(None)]) == []
    assert policies.check_claim_templates_unlabelled([statefulset({})]) == []


def test_a_client_that_names_the_object_store_fails():
    objs = sound_objects()
    container(objs)["env"].append({"name": "S3_URL", "value": "http://minio:9000"})
    assert policies.check_store_is_swappable(objs, "minio", {"minio"})
    objs = sound_objects()
    container(objs)["env"][0]["valueFrom"]["secretKeyRef"]["name"] = "minio"
    assert policies.check_store_is_swappable(objs, "minio", {"minio"})
    # ...but the store's own objects may.
    objs = sound_objects()
    container(objs)["env"][0]["valueFrom"]["secretKeyRef"]["name"] = "minio"
    for obj in objs:
        obj["metadata"].setdefault("labels", {})["app.kubernetes.io/name"] = "minio"
    assert policies.check_store_is_swappable(objs, "minio", {"minio"}) == []


def test_the_schema_check_catches_a_misspelt_field():
    objs = sound_objects()
    container(objs)["livenesProbe"] = container(objs).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment(objs), kubernetes_version(), strict=True)


# -- exposure and credentials ------------------------------------------------------------------------

def node_port_service(name="web"):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "NodePort", "selector": {"app.kubernetes.io/name": "web"},
                     "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080}]}}


def test_a_node_port_the_readme_does_not_explain_fails():
    objs = sound_objects() + [node_port_service()]
    assert policies.check_node_ports_documented(objs, {})
    assert policies.check_node_ports_documented(objs, {"web": ""})
    assert policies.check_node_ports_documented(objs, {"web": "hospital systems without DNS"}) == []
    assert policies.check_node_ports_documented(sound_objects(), {}) == []


def test_the_readme_table_of_node_ports_is_read():
    readme = """# Title

## Ports on the nodes (NodePorts)

| Service | node port | why |
|---|---|---|
| `web` | 30080 | hospital systems without DNS |

## Next
| other | x | y |
"""
    assert policies.readme_node_ports(readme) == {"web": "hospital systems without DNS"}


@pytest.mark.parametrize("flag", ["--web.enable-lifecycle", "--web.enable-admin-api"])
def test_a_lifecycle_or_admin_flag_fails(flag):
    objs = sound_objects()
    container(objs)["args"] = ["--config.file=/etc/prometheus/prometheus.yml", flag]
    assert policies.check_no_dangerous_flags(objs)
    assert policies.check_no_dangerous_flags(sound_objects()) == []


def test_streamlit_with_error_details_fails():
    objs = sound_objects()
    container(objs)["command"] = ["streamlit", "run", "app.py", "--server.port=8501"]
    assert policies.check_streamlit_hides_error_details(objs)
    container(objs)["command"].append("--client.showErrorDetails=none")
    assert policies.check_streamlit_hides_error_details(objs) == []
    container(objs)["command"].pop()
    container(objs)["env"].append({"name": "STREAMLIT_CLIENT_SHOW_ERROR_DETAILS", "value": "none"})
    assert policies.check_streamlit_hides_error_details(objs) == []


def test_a_component_without_its_credentials_fails():
    objs = sound_objects()
    required = {"web": {"secret_env": ["DB_PASSWORD"], "env": ["DB_URL"], "flags": ["--web-login"]}}
    assert policies.check_components_ask_for_credentials(objs, required) == ["Deployment/web: runs without --web-login"]
    container(objs)["command"].append("--web-login")
    assert policies.check_components_ask_for_credentials(objs, required) == []
    container(objs)["env"][0] = {"name": "DB_PASSWORD", "value": "$(OTHER)"}
    assert policies.check_components_ask_for_credentials(objs, required) == [
        "Deployment/web: DB_PASSWORD does not come from a Secret"]


def ingress(**change):
    obj = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": "web", "annotations": {"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}},
           "spec": {"ingressClassName": "public", "tls": [{"hosts": ["web.example"], "secretName": "readmit-tls"}],
                    "rules": [{"host": "web.example", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}
    for key, value in change.items():
        if key == "annotations":
            obj["metadata"]["annotations"] = value
        else:
            obj["spec"][key] = value
    return obj


@pytest.mark.parametrize("change", [{"tls": []}, {"tls": [{"hosts": ["web.example"], "secretName": "other"}]},
                                    {"annotations": {}}, {"ingressClassName": "nginx"},
                                    {"rules": [{"http": {"paths": []}}]}])
def test_an_ingress_without_tls_or_redirect_fails(change):
    assert policies.check_ingresses_use_tls([ingress()]) == []
    assert policies.check_ingresses_use_tls([ingress(**change)])


def test_a_list_of_named_secret_references_is_no_literal_secret():
    objs = sound_objects()
    container(objs)["env"].append({"name": "API_KEYS", "value": "ui:$(API_KEY_UI),hospital:$(API_KEY_HOSPITAL)"})
    assert policies.check_no_plaintext_secrets(objs) == []
    container(objs)["env"][-1]["value"] = "ui:$(API_KEY_UI),hospital:abcdefghijklmnopqrstuvwxyz"
    assert policies.check_no_plaintext_secrets(objs)
