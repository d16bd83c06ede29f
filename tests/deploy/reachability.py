"""Who can reach whom under Kubernetes NetworkPolicies: a small evaluator of the API's semantics.

Pure Python on the objects ``kubectl kustomize`` renders (dicts). The semantics
(https://kubernetes.io/docs/concepts/services-networking/network-policies/):

* a pod is isolated for a direction (Ingress, Egress) when at least one NetworkPolicy of its
  namespace selects it (``spec.podSelector``) with that type in its ``policyTypes`` (missing:
  Ingress, plus Egress when the policy has egress rules); a pod no policy isolates is unrestricted
  in that direction;
* an isolated pod accepts what the union of the rules of those policies allows; a rule allows a peer
  that one of its ``from``/``to`` entries matches (missing or empty: every peer) on one of its
  ``ports`` (missing or empty: every port);
* a ``podSelector`` alone means pods of the policy's namespace, a ``namespaceSelector`` alone every
  pod of the matching namespaces, both in one entry the matching pods of the matching namespaces;
* a connection happens only when the source's egress and the destination's ingress both allow it.

``ipBlock`` peers match addresses; whether they also match pods' addresses is left to the network
plugin by Kubernetes. Calico (MicroK8s' CNI) matches them, so the evaluator does by default
(``ipblock_matches_pods``), which is the cautious reading. Traffic between a pod and its own node
(kubelet probes) is always allowed and not modelled.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet")
NAME_LABEL = "app.kubernetes.io/name"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str = "TCP"
    name: str | None = None


# A port no endpoint declares: a rule that allows it allows every port (a rule without ``ports``).
ANY_OTHER_PORT = Port(1, "TCP")


@dataclass(frozen=True)
class Endpoint:
    """A pod (``namespace`` set) or an address outside the pod network (``namespace`` None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    platform: bool = False

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


# -- selectors -------------------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions, ANDed); an empty selector matches all."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {operator!r}")
    return True


def policy_types(policy: Obj) -> set[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if spec.get("egress") else set())


def selects(policy: Obj, pod: Endpoint) -> bool:
    """Whether ``policy`` applies to ``pod`` (same namespace, podSelector matches)."""
    return (pod.is_pod and policy.get("metadata", {}).get("namespace") == pod.namespace
            and selector_matches((policy.get("spec") or {}).get("podSelector"), pod.labels))


def in_ip_block(block: Mapping[str, Any], ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if address not in ipaddress.ip_network(block["cidr"], strict=False):
        return False
    return not any(address in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint,
                 namespaces: Mapping[str, Mapping[str, str]], ipblock_matches_pods: bool = True) -> bool:
    """Whether one ``from``/``to`` entry of a policy in ``policy_namespace`` matches ``other``."""
    if "ipBlock" in peer:
        if other.is_pod and not ipblock_matches_pods:
            return False
        return in_ip_block(peer["ipBlock"], other.ip)
    if not other.is_pod:
        return False  # pod and namespace selectors only ever select pods
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is None:
        if other.namespace != policy_namespace:
            return False
    elif not selector_matches(namespace_selector, namespaces.get(other.namespace or "", {})):
        return False
    pod_selector = peer.get("podSelector")
    return pod_selector is None or selector_matches(pod_selector, other.labels)


def port_matches(rule_ports: Sequence[Mapping[str, Any]] | None, port: Port) -> bool:
    """Whether a rule's ``ports`` allow ``port`` of the destination (named ports resolve there)."""
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != port.protocol:
            continue
        if "port" not in entry:
            return True
        value = entry["port"]
        if isinstance(value, str) and not value.isdigit():
            if port.name is not None and value == port.name:
                return True
            continue
        low = int(value)
        high = int(entry.get("endPort", low))
        if low <= port.number <= high:
            return True
    return False


# -- connections -----------------------------------------------------------------------------------


def allows(policies: Iterable[Obj], direction: str, subject: Endpoint, peer: Endpoint, port: Port,
           namespaces: Mapping[str, Mapping[str, str]], ipblock_matches_pods: bool = True) -> bool:
    """Whether ``subject``'s policies of ``direction`` ("Ingress": ``peer`` connects to ``subject``
    on ``port``; "Egress": ``subject`` connects to ``peer`` on ``port``) allow the connection."""
    relevant = [p for p in policies if selects(p, subject) and direction in policy_types(p)]
    if not relevant:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in relevant:
        namespace = policy["metadata"]["namespace"]
        for rule in (policy.get("spec") or {}).get(rules_key) or []:
            peers = rule.get(peers_key) or []
            if peers and not any(peer_matches(p, namespace, peer, namespaces, ipblock_matches_pods) for p in peers):
                continue
            if port_matches(rule.get("ports"), port):
                return True
    return False


BOTH_SIDES = frozenset({"Egress", "Ingress"})


def reachable(source: Endpoint, destination: Endpoint, port: Port, policies: Sequence[Obj],
              namespaces: Mapping[str, Mapping[str, str]], ipblock_matches_pods: bool = True,
              sides: Iterable[str] = BOTH_SIDES) -> bool:
    """``source`` may open a connection to ``destination`` on ``port``: both ends allow it (or only
    the ends named in ``sides``: "Egress" is the source's, "Ingress" the destination's)."""
    sides = set(sides)
    return (("Egress" not in sides
             or allows(policies, "Egress", source, destination, port, namespaces, ipblock_matches_pods))
            and ("Ingress" not in sides
                 or allows(policies, "Ingress", destination, source, port, namespaces, ipblock_matches_pods)))


def port_key(destination: Endpoint, port: Port) -> str:
    """How the matrix names a destination port: ``name:port`` (TCP), ``name:port/UDP``, ``name:*``."""
    if port == ANY_OTHER_PORT:
        return f"{destination.name}:*"
    suffix = "" if port.protocol == "TCP" else f"/{port.protocol}"
    return f"{destination.name}:{port.number}{suffix}"


def matrix(endpoints: Sequence[Endpoint], policies: Sequence[Obj],
           namespaces: Mapping[str, Mapping[str, str]] | None = None,
           ipblock_matches_pods: bool = True, sides: Iterable[str] = BOTH_SIDES) -> set[tuple[str, str]]:
    """Every allowed (source name, destination port key) with a platform pod on at least one end,
    over each destination's declared ports, every port a policy names (a rule may open a port the
    destination does not declare) and one port nobody names (``name:*``: a rule without ports).

    With one side only, what that side's policies allow on their own: ``{"Ingress"}``, what the
    platform's pods accept (pairs whose destination is a platform pod); ``{"Egress"}``, where they
    may connect (pairs whose source is a platform pod)."""
    namespaces = namespaces if namespaces is not None else namespace_labels(endpoints)
    sides = set(sides)
    named = policy_ports(policies)
    allowed = set()
    for source in endpoints:
        for destination in endpoints:
            if sides == {"Ingress"}:
                governed = destination.platform
            elif sides == {"Egress"}:
                governed = source.platform
            else:
                governed = source.platform or destination.platform
            if not governed:
                continue
            declared = {(p.number, p.protocol) for p in destination.ports}
            probes = (*destination.ports, *(p for p in named if (p.number, p.protocol) not in declared), ANY_OTHER_PORT)
            for port in probes:
                if reachable(source, destination, port, policies, namespaces, ipblock_matches_pods, sides):
                    allowed.add((source.name, port_key(destination, port)))
    return allowed


def policy_ports(policies: Iterable[Obj]) -> list[Port]:
    """Every numeric port (and range end) the rules of ``policies`` name, once, sorted."""
    found = set()
    for policy in policies:
        spec = policy.get("spec") or {}
        for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
            for entry in rule.get("ports") or []:
                value = entry.get("port")
                if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                    for number in {int(value), int(entry.get("endPort", value))}:
                        found.add(Port(number, entry.get("protocol", "TCP")))
    return sorted(found, key=lambda p: (p.number, p.protocol))


def namespace_labels(endpoints: Iterable[Endpoint]) -> dict[str, dict[str, str]]:
    """The labels Kubernetes gives every namespace (kubernetes.io/metadata.name=NAME)."""
    return {e.namespace: {NAMESPACE_NAME_LABEL: e.namespace} for e in endpoints if e.namespace}


# -- from rendered manifests -----------------------------------------------------------------------


def network_policies(objects: Iterable[Obj]) -> list[Obj]:
    return [o for o in objects if o.get("kind") == "NetworkPolicy"]


def template_of(obj: Obj) -> Obj | None:
    if obj.get("kind") in WORKLOAD_KINDS:
        return (obj.get("spec") or {}).get("template")
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj if obj.get("kind") == "Pod" else None


def platform_pods(objects: Iterable[Obj], pod_network: str = "10.1.0.0/16") -> list[Endpoint]:
    """One endpoint per pod template (named by its app.kubernetes.io/name label), with its labels
    and its containers' ports, at an address of the pod network."""
    network = ipaddress.ip_network(pod_network)
    pods = []
    for obj in objects:
        template = template_of(obj)
        if template is None:
            continue
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        spec = template.get("spec") or {}
        ports = tuple(Port(int(p["containerPort"]), p.get("protocol", "TCP"), p.get("name"))
                      for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
                      for p in c.get("ports") or [])
        ip = str(network.network_address + 256 * (len(pods) + 1) + 10)
        pods.append(Endpoint(labels.get(NAME_LABEL, obj["metadata"]["name"]), ip,
                             obj["metadata"].get("namespace"), labels, ports, platform=True))
    return pods


# -- the README's table ----------------------------------------------------------------------------

EVERY_PLATFORM_POD = "every platform pod"
NOBODY = "nobody"
_TOKEN = re.compile(r"`([^`]+)`")


def readme_section(markdown: str, title: str) -> str:
    """The text under the heading ``title`` (any level), up to the next heading of that level or higher."""
    lines = markdown.splitlines()
    for index, line in enumerate(lines):
        heading = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if heading and heading.group(2) == title:
            level = len(heading.group(1))
            body = []
            for following in lines[index + 1:]:
                other = re.match(r"^(#+)\s", following)
                if other and len(other.group(1)) <= level:
                    break
                body.append(following)
            return "\n".join(body)
    raise LookupError(f"no heading {title!r}")


def parse_reachability_table(section: str, platform: Iterable[str]) -> dict[str, set[str]]:
    """The table ``| to | from | why |``: destination port key (first backticked token of the first
    cell) -> source names (backticked tokens of the second cell; "every platform pod" and "nobody"
    spelled out). Raises on a row it cannot read, so a typo cannot hide an allowed pair."""
    rows: dict[str, set[str]] = {}
    platform = set(platform)
    table = [line for line in section.splitlines() if line.lstrip().startswith("|")]
    if len(table) < 3:
        raise ValueError("no table in the section")
    for line in table[2:]:  # header, separator
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2:
            raise ValueError(f"row with fewer than two cells: {line!r}")
        keys = _TOKEN.findall(cells[0])
        if len(keys) != 1:
            raise ValueError(f"first cell must name one destination port in backticks: {line!r}")
        key = keys[0]
        if key in rows:
            raise ValueError(f"{key} listed twice")
        sources = set(_TOKEN.findall(cells[1]))
        rest = _TOKEN.sub("", cells[1]).replace(",", " ").strip().lower()
        if rest == NOBODY and not sources:
            rows[key] = set()
            continue
        if rest == EVERY_PLATFORM_POD:
            sources |= platform
        elif rest:
            raise ValueError(f"cannot read the sources of {key}: {cells[1]!r}")
        if not sources:
            raise ValueError(f"{key}: no source (write `nobody`)")
        rows[key] = sources
    return rows


def pairs_of(table: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    return {(source, key) for key, sources in table.items() for source in sources}


def compare(computed: set[tuple[str, str]], documented: set[tuple[str, str]]) -> list[str]:
    """Differences between the policies' matrix and the README's, one sentence each."""
    problems = [f"{s} -> {d} is allowed by the policies but not in the README"
                for s, d in sorted(computed - documented)]
    problems += [f"{s} -> {d} is in the README but the policies do not allow it"
                 for s, d in sorted(documented - computed)]
    return problems
