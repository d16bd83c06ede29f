"""The NetworkPolicies of the three server folders: default deny everywhere, and exactly the
connections the README's "Who can reach whom (NetworkPolicies)" table lists.

The matrix is computed from the rendered manifests (plain ``kubectl kustomize`` of each folder) by
tests/deploy/reachability.py, over every pod template of the platform and probes around it:
MicroK8s' ingress controller, CoreDNS and another kube-system pod, a pod of another namespace
carrying a platform pod's labels, a pod started by hand in namespace readmit, and a host on the
Internet. The evaluator itself is tested on small hand-written policies (second half).
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from . import reachability as r
from .conftest import NAMESPACE, REPO_ROOT, deploy_servers, kubernetes_version

FOLDERS = [s.folder for s in deploy_servers()]
README_SECTION = "Who can reach whom (NetworkPolicies)"

# MicroK8s' ingress add-on up to 1.34: NGINX, DaemonSet "nginx-ingress-microk8s-controller" in
# namespace "ingress", pods labelled name=nginx-ingress-microk8s (canonical/microk8s-core-addons,
# addons/ingress/ingress.yaml). From 1.35 the add-on installs Traefik with other labels.
INGRESS_CONTROLLER = r.Endpoint("ingress-controller", "10.1.250.10", "ingress", {"name": "nginx-ingress-microk8s"},
                                (r.Port(80, "TCP", "http"), r.Port(443, "TCP", "https")))
# The dns add-on: CoreDNS in kube-system, pods labelled k8s-app=kube-dns, 53 over UDP and TCP.
KUBE_DNS = r.Endpoint("kube-dns", "10.1.251.10", "kube-system", {"k8s-app": "kube-dns"},
                      (r.Port(53, "UDP", "dns"), r.Port(53, "TCP", "dns-tcp"), r.Port(9153, "TCP", "metrics")))
# Another add-on's pod in kube-system (metrics-server): the DNS rule must name CoreDNS's pods only.
METRICS_SERVER = r.Endpoint("metrics-server", "10.1.251.11", "kube-system", {"k8s-app": "metrics-server"},
                            (r.Port(10250, "TCP", "https"),))
# Someone else's pod that copies a platform client's labels: podSelectors are namespace-scoped.
OTHER_NAMESPACE = r.Endpoint("other-namespace", "10.1.252.10", "default",
                             {"app.kubernetes.io/name": "airflow-scheduler", "readmit.io/server": "server1-data"},
                             (r.Port(8080, "TCP", "http"),))
# A pod started by hand in the platform's namespace (`kubectl run`): none of the platform's labels,
# but the ingress controller's pod label (a peer that forgot its namespaceSelector would admit it).
STRAY_POD = r.Endpoint("stray-pod", "10.1.253.10", NAMESPACE, {"run": "debug", "name": "nginx-ingress-microk8s"},
                       (r.Port(8080, "TCP", "http"),))
# A host outside the cluster (the UCI archive, a browser): TEST-NET-3 address.
INTERNET = r.Endpoint("internet", "203.0.113.10", None, {}, (r.Port(443, "TCP"), r.Port(80, "TCP")))
AROUND = (INGRESS_CONTROLLER, KUBE_DNS, METRICS_SERVER, OTHER_NAMESPACE, STRAY_POD, INTERNET)


# -- the platform, rendered ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policies(rendered) -> dict[str, list[dict[str, Any]]]:
    """Folder -> its rendered NetworkPolicies."""
    return {folder: r.network_policies(rendered[folder].objects) for folder in FOLDERS}


@pytest.fixture(scope="module")
def all_policies(policies) -> list[dict[str, Any]]:
    return [p for folder in FOLDERS for p in policies[folder]]


@pytest.fixture(scope="module")
def pods_by_folder(rendered) -> dict[str, list[r.Endpoint]]:
    return {folder: r.platform_pods(rendered[folder].objects) for folder in FOLDERS}


@pytest.fixture(scope="module")
def platform(pods_by_folder) -> list[r.Endpoint]:
    pods = [p for folder in FOLDERS for p in pods_by_folder[folder]]
    names = [p.name for p in pods]
    assert len(names) == len(set(names)), f"two pod templates share an app.kubernetes.io/name: {names}"
    return pods


@pytest.fixture(scope="module")
def endpoints(platform) -> list[r.Endpoint]:
    return [*platform, *AROUND]


@pytest.fixture(scope="module")
def documented(platform) -> dict[str, set[str]]:
    section = r.readme_section((REPO_ROOT / "README.md").read_text(), README_SECTION)
    return r.parse_reachability_table(section, [p.name for p in platform])


def test_the_platforms_pods_are_the_expected_ones(platform):
    """The pods the matrix covers (a new workload must get its policies and its README rows)."""
    assert {p.name for p in platform} == {
        "mysql-data", "mysql-data-setup", "airflow-api", "airflow-scheduler", "airflow-dag-processor", "jupyter",
        "mysql-tracking", "minio", "minio-bucket", "mlflow",
        "api", "ui", "locust", "prometheus", "pushgateway", "grafana"}
    assert all(p.namespace == NAMESPACE for p in platform)


@pytest.mark.parametrize("folder", FOLDERS)
def test_network_policies_validate_against_the_kubernetes_schema(policies, folder):
    """Like test_manifests: strict validation against the pinned MicroK8s channel's Kubernetes."""
    assert policies[folder], f"{folder} renders no NetworkPolicy"
    failures = []
    for policy in policies[folder]:
        try:
            kubernetes_validate.validate(policy, kubernetes_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{policy['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not failures, "\n".join(failures)


def is_default_deny(policy: dict[str, Any]) -> bool:
    spec = policy.get("spec") or {}
    return r.policy_types(policy) == {"Ingress", "Egress"} and not spec.get("ingress") and not spec.get("egress")


def test_every_pod_of_the_platform_is_under_a_default_deny(platform, all_policies):
    """Each pod template is selected by a policy that isolates both directions and allows nothing."""
    uncovered = [p.name for p in platform if not any(is_default_deny(x) and r.selects(x, p) for x in all_policies)]
    assert not uncovered, f"no default-deny policy selects {uncovered}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_folders_policies_govern_its_own_pods_only(policies, pods_by_folder, folder):
    """So a folder's apply and label-scoped prune keep its pods and their policies together."""
    for policy in policies[folder]:
        name = policy["metadata"]["name"]
        assert policy["metadata"]["labels"]["readmit.io/server"] == folder
        assert any(r.selects(policy, p) for p in pods_by_folder[folder]), f"{name} selects no pod of {folder}"
        for other in FOLDERS:
            if other != folder:
                strays = [p.name for p in pods_by_folder[other] if r.selects(policy, p)]
                assert not strays, f"{folder}'s {name} selects {other}'s pods {strays}"


def test_policy_names_are_unique_across_folders(all_policies):
    """One namespace: two folders declaring one name would overwrite (and prune) each other's."""
    names = [p["metadata"]["name"] for p in all_policies]
    assert len(names) == len(set(names)), sorted(names)


def test_the_ingress_controller_peer_is_the_pinned_channels_add_on(all_policies):
    """The policies name NGINX's pods, which is MicroK8s' ingress add-on up to 1.34."""
    major, minor = (int(x) for x in kubernetes_version().split(".")[:2])
    assert (major, minor) < (1, 35), (
        "MicroK8s >= 1.35 installs Traefik as the ingress add-on: update the ingress-controller peer of "
        "the NetworkPolicies (and INGRESS_CONTROLLER here)")
    peers = [peer for policy in all_policies for rule in policy["spec"].get("ingress") or []
             for peer in rule.get("from") or [] if "namespaceSelector" in peer]
    assert peers
    for peer in peers:
        assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}},
                        "podSelector": {"matchLabels": {"name": "nginx-ingress-microk8s"}}}


def test_the_matrix_is_the_readmes_table(endpoints, all_policies, documented):
    """Both ways: nothing is allowed that the table does not list, everything it lists is allowed."""
    problems = r.compare(r.matrix(endpoints, all_policies), r.pairs_of(documented))
    assert not problems, "\n".join(problems)


def test_each_connection_is_written_on_both_ends(endpoints, all_policies):
    """Each side on its own allows exactly the connections both allow together: what a platform pod
    accepts, its clients may send, and where a platform pod may connect, that peer accepts. So no
    side is wider than the matrix shows (a wider side would be masked by the other)."""
    both = r.matrix(endpoints, all_policies)
    platform = {e.name for e in endpoints if e.platform}
    accepted = r.matrix(endpoints, all_policies, sides={"Ingress"})
    sent = r.matrix(endpoints, all_policies, sides={"Egress"})
    into_platform = {(s, d) for s, d in both if d.split(":")[0] in platform}
    from_platform = {(s, d) for s, d in both if s in platform}
    assert not accepted - into_platform, f"ingress rules without their egress rule: {sorted(accepted - into_platform)}"
    assert not sent - from_platform, f"egress rules without their ingress rule: {sorted(sent - from_platform)}"
    assert accepted == into_platform and sent == from_platform


def test_the_table_has_a_row_for_every_port_of_the_platform(platform, documented):
    """A port nobody may reach is written down as such (`nobody`), not left out."""
    ports = {r.port_key(p, port) for p in platform for port in p.ports}
    assert ports, "the platform declares no container port"
    missing = sorted(ports - set(documented))
    assert not missing, f"the README's table has no row for {missing}"
    sources = {s for names in documented.values() for s in names}
    known = {e.name for e in [*platform, *AROUND]}
    assert sources <= known, f"unknown sources in the README's table: {sorted(sources - known)}"


def test_every_policy_is_needed(endpoints, all_policies):
    """Dropping any one allowing policy changes the matrix: none is dead or duplicated. (A folder's
    default deny may change nothing today: it is the net for a pod no other policy isolates.)"""
    full = r.matrix(endpoints, all_policies)
    for index, policy in enumerate(all_policies):
        if is_default_deny(policy):
            continue
        rest = all_policies[:index] + all_policies[index + 1:]
        assert r.matrix(endpoints, rest) != full, f"{policy['metadata']['name']} changes nothing"


def test_the_comparison_catches_a_wrong_policy(endpoints, all_policies, documented):
    """A rule added on both ends (the UI talking to MLflow) and a rule dropped (MLflow's ingress from
    the API) each show up as a difference with the README."""
    widened = copy.deepcopy(all_policies)
    by_name = {p["metadata"]["name"]: p for p in widened}
    by_name["mlflow"]["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {r.NAME_LABEL: "ui"}}})
    by_name["ui"]["spec"]["egress"].append({"to": [{"podSelector": {"matchLabels": {r.NAME_LABEL: "mlflow"}}}],
                                            "ports": [{"protocol": "TCP", "port": 5000}]})
    problems = r.compare(r.matrix(endpoints, widened), r.pairs_of(documented))
    assert problems == ["ui -> mlflow:5000 is allowed by the policies but not in the README"]

    narrowed = copy.deepcopy(all_policies)
    mlflow = next(p for p in narrowed if p["metadata"]["name"] == "mlflow")
    api_peer = {"podSelector": {"matchLabels": {r.NAME_LABEL: "api"}}}
    mlflow["spec"]["ingress"][0]["from"].remove(api_peer)
    problems = r.compare(r.matrix(endpoints, narrowed), r.pairs_of(documented))
    assert problems == ["api -> mlflow:5000 is in the README but the policies do not allow it"]


# -- the evaluator, on hand-written policies -------------------------------------------------------

WEB = r.Endpoint("web", "10.1.0.10", "shop", {"app": "web"},
                 (r.Port(80, "TCP", "http"), r.Port(9100, "TCP", "metrics")))
DB = r.Endpoint("db", "10.1.0.11", "shop", {"app": "db"}, (r.Port(5432, "TCP", "pg"),))
ADMIN = r.Endpoint("admin", "10.1.1.10", "ops", {"app": "admin"}, (r.Port(8080, "TCP"),))
WEB_IN_OPS = r.Endpoint("web-in-ops", "10.1.1.11", "ops", {"app": "web"}, ())
OUTSIDE = r.Endpoint("outside", "198.51.100.7", None, {}, (r.Port(443, "TCP"),))
NAMESPACES = {"shop": {"kubernetes.io/metadata.name": "shop", "team": "shop"},
              "ops": {"kubernetes.io/metadata.name": "ops", "team": "ops"}}


def policy(name: str, namespace: str, selector: dict[str, Any], types: list[str] | None = None,
           ingress: list[dict[str, Any]] | None = None, egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector}
    if types is not None:
        spec["policyTypes"] = types
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def can(source: r.Endpoint, destination: r.Endpoint, port: r.Port, policies: list[dict[str, Any]],
        ipblock_matches_pods: bool = True) -> bool:
    return r.reachable(source, destination, port, policies, NAMESPACES, ipblock_matches_pods)


PG, HTTP, METRICS = DB.ports[0], WEB.ports[0], WEB.ports[1]


def test_a_pod_without_any_policy_is_open_both_ways():
    only_db = [policy("db", "shop", {"matchLabels": {"app": "db"}}, ["Ingress", "Egress"])]
    assert can(ADMIN, WEB, HTTP, only_db) and can(WEB, ADMIN, ADMIN.ports[0], only_db)
    assert can(OUTSIDE, WEB, HTTP, only_db) and can(WEB, OUTSIDE, OUTSIDE.ports[0], only_db)
    assert not can(WEB, DB, PG, only_db)  # the isolated pod accepts nothing
    assert not can(DB, WEB, HTTP, only_db)  # and sends nothing


def test_default_deny_isolates_every_pod_of_its_namespace_only():
    deny = [policy("deny", "shop", {}, ["Ingress", "Egress"])]
    assert not can(WEB, DB, PG, deny) and not can(ADMIN, WEB, HTTP, deny)
    assert not can(WEB, OUTSIDE, OUTSIDE.ports[0], deny)
    assert can(ADMIN, WEB_IN_OPS, r.ANY_OTHER_PORT, deny)  # another namespace's pods stay open
    ingress_only = [policy("deny-in", "shop", {}, ["Ingress"])]
    assert not can(ADMIN, WEB, HTTP, ingress_only)
    assert can(WEB, ADMIN, ADMIN.ports[0], ingress_only)  # egress is not isolated


def test_a_connection_needs_both_ends():
    deny = policy("deny", "shop", {}, ["Ingress", "Egress"])
    db_in = policy("db-in", "shop", {"matchLabels": {"app": "db"}}, ["Ingress"],
                   ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}])
    web_out = policy("web-out", "shop", {"matchLabels": {"app": "web"}}, ["Egress"],
                     egress=[{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}])
    assert not can(WEB, DB, PG, [deny, db_in])
    assert not can(WEB, DB, PG, [deny, web_out])
    assert can(WEB, DB, PG, [deny, db_in, web_out])
    assert not can(DB, WEB, HTTP, [deny, db_in, web_out])  # rules are one-way


def test_ports_protocols_named_ports_and_ranges():
    def ingress(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [policy("web", "shop", {"matchLabels": {"app": "web"}}, ["Ingress"], ingress=[{"ports": ports}])]

    assert can(ADMIN, WEB, HTTP, ingress([{"protocol": "TCP", "port": 80}]))
    assert not can(ADMIN, WEB, METRICS, ingress([{"protocol": "TCP", "port": 80}]))
    assert not can(ADMIN, WEB, r.Port(80, "UDP"), ingress([{"protocol": "TCP", "port": 80}]))
    assert can(ADMIN, WEB, r.Port(80, "UDP"), ingress([{"protocol": "UDP", "port": 80}]))
    assert can(ADMIN, WEB, METRICS, ingress([{"port": "metrics"}]))
    assert not can(ADMIN, WEB, HTTP, ingress([{"port": "metrics"}]))
    assert can(ADMIN, WEB, METRICS, ingress([{"port": 9000, "endPort": 9200}]))
    assert not can(ADMIN, WEB, HTTP, ingress([{"port": 9000, "endPort": 9200}]))
    assert can(ADMIN, WEB, r.ANY_OTHER_PORT, ingress([]))  # no ports: every port
    assert can(ADMIN, WEB, r.Port(12345), ingress([{"protocol": "TCP"}]))  # a protocol without a port
    named = r.policy_ports(ingress([{"port": 9000, "endPort": 9002}, {"protocol": "UDP", "port": 53},
                                    {"port": "metrics"}]))
    assert named == [r.Port(53, "UDP"), r.Port(9000), r.Port(9002)]


def test_namespace_and_pod_selectors_in_one_entry_and_in_two():
    one_entry = [policy("db", "shop", {"matchLabels": {"app": "db"}}, ["Ingress"], ingress=[{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"app": "web"}}}]}])]
    assert can(WEB_IN_OPS, DB, PG, one_entry)
    assert not can(ADMIN, DB, PG, one_entry)  # right namespace, wrong pod
    assert not can(WEB, DB, PG, one_entry)  # right pod labels, wrong namespace
    two_entries = [policy("db", "shop", {"matchLabels": {"app": "db"}}, ["Ingress"], ingress=[{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "ops"}}}, {"podSelector": {"matchLabels": {"app": "web"}}}]}])]
    assert can(ADMIN, DB, PG, two_entries) and can(WEB, DB, PG, two_entries) and can(WEB_IN_OPS, DB, PG, two_entries)
    pod_only = [policy("db", "shop", {"matchLabels": {"app": "db"}}, ["Ingress"], ingress=[{"from": [
        {"podSelector": {"matchLabels": {"app": "web"}}}]}])]
    assert can(WEB, DB, PG, pod_only)
    assert not can(WEB_IN_OPS, DB, PG, pod_only)  # a podSelector alone: the policy's namespace only
    assert not can(OUTSIDE, DB, PG, pod_only)  # selectors never match an address outside the pod network


def test_match_expressions():
    in_list = policy("db", "shop", {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}]},
                     ["Ingress"])
    assert r.selects(in_list, DB) and not r.selects(in_list, WEB)
    not_in = policy("x", "shop", {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]})
    assert r.selects(not_in, WEB) and not r.selects(not_in, DB)
    exists = policy("x", "shop", {"matchExpressions": [{"key": "app", "operator": "Exists"}]})
    missing = policy("x", "shop", {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]})
    assert r.selects(exists, WEB) and r.selects(missing, WEB)
    assert not r.selects(exists, OUTSIDE)  # an address is never a pod a policy selects


def test_egress_only_policies_and_default_policy_types():
    egress_only = [policy("web", "shop", {"matchLabels": {"app": "web"}}, ["Egress"],
                          egress=[{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}])]
    assert can(ADMIN, WEB, HTTP, egress_only)  # ingress stays open
    assert can(WEB, DB, PG, egress_only) and not can(WEB, ADMIN, ADMIN.ports[0], egress_only)
    # Without policyTypes: Ingress always, Egress because there are egress rules.
    implicit = [policy("web", "shop", {"matchLabels": {"app": "web"}},
                       egress=[{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}])]
    assert r.policy_types(implicit[0]) == {"Ingress", "Egress"}
    assert not can(ADMIN, WEB, HTTP, implicit) and can(WEB, DB, PG, implicit)
    ingress_rules_only = policy("web", "shop", {"matchLabels": {"app": "web"}}, ingress=[{}])
    assert r.policy_types(ingress_rules_only) == {"Ingress"}


def test_ip_blocks_with_exceptions_and_pod_addresses():
    internet = [policy("web", "shop", {"matchLabels": {"app": "web"}}, ["Egress"], egress=[{
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.1.0.0/16"]}}], "ports": [{"port": 443}]}])]
    assert can(WEB, OUTSIDE, OUTSIDE.ports[0], internet)
    assert not can(WEB, OUTSIDE, r.Port(80), internet)
    assert not can(WEB, ADMIN, r.Port(443), internet)  # the pod network is excepted
    everything = [policy("web", "shop", {"matchLabels": {"app": "web"}}, ["Egress"], egress=[{
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}])]
    assert can(WEB, ADMIN, r.Port(443), everything)  # Calico: ipBlocks match pods' addresses too
    assert not can(WEB, ADMIN, r.Port(443), everything, ipblock_matches_pods=False)


def test_the_matrix_covers_undeclared_ports_and_skips_pairs_without_a_platform_pod():
    web = r.Endpoint("web", "10.1.0.10", "shop", {"app": "web"}, (r.Port(80),), platform=True)
    other = r.Endpoint("other", "10.1.1.10", "ops", {}, (r.Port(8080),))
    wide_open = r.matrix([web, other, OUTSIDE], [])
    assert ("other", "web:80") in wide_open and ("other", "web:*") in wide_open
    assert ("web", "outside:443") in wide_open and ("web", "web:80") in wide_open
    assert not any(s in ("other", "outside") and d.split(":")[0] in ("other", "outside") for s, d in wide_open)
    deny = [policy("deny", "shop", {}, ["Ingress", "Egress"]),
            policy("web", "shop", {"matchLabels": {"app": "web"}}, ["Ingress"],
                   ingress=[{"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}])]
    assert r.matrix([web, other, OUTSIDE], deny) == {("other", "web:80")}
    # A port the destination does not declare but a rule names is probed too.
    undeclared = deny[:1] + [policy("web", "shop", {"matchLabels": {"app": "web"}}, ["Ingress"],
                                    ingress=[{"ports": [{"port": 8443}]}])]
    assert r.matrix([web, other, OUTSIDE], undeclared) == {("other", "web:8443"), ("outside", "web:8443")}


def test_one_sided_views():
    deny = policy("deny", "shop", {}, ["Ingress", "Egress"])
    db_in = policy("db-in", "shop", {"matchLabels": {"app": "db"}}, ["Ingress"],
                   ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}])
    web = r.Endpoint("web", "10.1.0.10", "shop", {"app": "web"}, (), platform=True)
    db = r.Endpoint("db", "10.1.0.11", "shop", {"app": "db"}, (r.Port(5432),), platform=True)
    assert r.matrix([web, db], [deny, db_in], NAMESPACES) == set()  # web may not send
    assert r.matrix([web, db], [deny, db_in], NAMESPACES, sides={"Ingress"}) == {("web", "db:5432"), ("web", "db:*")}
    assert r.matrix([web, db], [deny, db_in], NAMESPACES, sides={"Egress"}) == set()


def test_the_readme_table_parser():
    section = """
| to | from | why |
|---|---|---|
| `db:5432` | `web`, `admin` | queries |
| `web:9100` | nobody | |
| `dns:53/UDP` | every platform pod | names |
"""
    table = r.parse_reachability_table(section, ["web", "db"])
    assert table == {"db:5432": {"web", "admin"}, "web:9100": set(), "dns:53/UDP": {"web", "db"}}
    assert r.pairs_of(table) == {("web", "db:5432"), ("admin", "db:5432"), ("web", "dns:53/UDP"), ("db", "dns:53/UDP")}
    for bad in ("| `db:5432` | web | x |", "| `db:5432` | | x |", "| db | `web` | x |"):
        with pytest.raises(ValueError):
            r.parse_reachability_table("| to | from | why |\n|---|---|---|\n" + bad, ["web"])
    assert r.readme_section("# A\n## B\ntext\n## C\nmore", "B").strip() == "text"
    with pytest.raises(LookupError):
        r.readme_section("# A", "B")
