"""Checks a rendered overlay as a whole, beyond what the per-object schemas can see.

Usage: check_manifests.py RENDERED.yaml WEIR_BINARY

- every selector (Service, PodDisruptionBudget, NetworkPolicy, ServiceMonitor, StatefulSet
  and Deployment) matches the pods or Services it is meant to;
- every named port a Service, probe, NetworkPolicy or ServiceMonitor uses exists;
- the HorizontalPodAutoscaler's target exists, and every ConfigMap a pod mounts is rendered;
- every container runs as non-root with a read-only root filesystem and resource limits;
- the ServiceMonitor (a CRD the Kubernetes schemas lack) matches its own schema below;
- weir's config in the weir-config ConfigMap passes `weir check`, and the Deployment's
  terminationGracePeriodSeconds covers the preStop pause plus `server.shutdown_timeout`.
Prints each problem and exits 1 if there is any.
"""

import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import yaml

SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    "additionalProperties": False,
                },
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "honorLabels": {"type": "boolean"},
                            "bearerTokenSecret": {"type": "object"},
                            "authorization": {"type": "object"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}

problems = []


def problem(message):
    problems.append(message)


def name_of(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def duration_seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h)", str(text).strip())
    if not match:
        return None
    return int(match.group(1)) * units[match.group(2)]


def pod_ports(template):
    return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p}


def check_workload(obj, config_maps):
    template = obj["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    if not matches(obj["spec"]["selector"].get("matchLabels", {}), labels):
        problem(f"{name_of(obj)}: selector does not match its own pod template labels {labels}")
    spec = template["spec"]
    security = spec.get("securityContext", {})
    ports = pod_ports(template)
    for container in spec["containers"]:
        where = f"{name_of(obj)} container {container['name']}"
        context = container.get("securityContext", {})
        if not (context.get("runAsNonRoot") or security.get("runAsNonRoot")):
            problem(f"{where}: not runAsNonRoot")
        if not context.get("readOnlyRootFilesystem"):
            problem(f"{where}: root filesystem is writable")
        if context.get("allowPrivilegeEscalation") is not False:
            problem(f"{where}: allowPrivilegeEscalation is not false")
        if "memory" not in container.get("resources", {}).get("limits", {}):
            problem(f"{where}: no memory limit")
        if not container.get("resources", {}).get("requests"):
            problem(f"{where}: no resource requests")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = container.get(probe, {})
            port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                problem(f"{where}: {probe} uses port {port!r}, which the pod does not name")
    for volume in spec.get("volumes", []):
        if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
            problem(f"{name_of(obj)}: mounts ConfigMap {volume['configMap']['name']!r}, which is not rendered")


def check_weir(deployment, config_maps, weir):
    config = config_maps.get("weir-config", {}).get("data", {}).get("weir.yaml")
    if config is None:
        return problem("ConfigMap/weir-config has no weir.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weir.yaml")
        with open(path, "w") as f:
            f.write(config)
        result = subprocess.run([weir, "check", "--config", path], capture_output=True, text=True)
        if result.returncode != 0:
            problem(f"weir check rejects ConfigMap/weir-config:\n{result.stdout}{result.stderr}")
    server = (yaml.safe_load(config) or {}).get("server", {})
    shutdown = duration_seconds(server.get("shutdown_timeout", "30s"))
    spec = deployment["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "weir")
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = int(command[-1]) if command and command[0].endswith("sleep") else 0
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if shutdown is None or grace < pause + shutdown:
        problem(
            f"{name_of(deployment)}: terminationGracePeriodSeconds {grace} < preStop {pause}s + "
            f"server.shutdown_timeout {server.get('shutdown_timeout')}"
        )


def main(rendered, weir):
    with open(rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    config_maps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    services = by_kind.get("Service", [])

    def pods_matching(selector):
        return [w for w in workloads if matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))]

    for workload in workloads:
        check_workload(workload, config_maps)
    for service in services:
        targets = pods_matching(service["spec"].get("selector", {}))
        if not targets:
            problem(f"{name_of(service)}: selector {service['spec'].get('selector')} matches no pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and not all(target in pod_ports(w["spec"]["template"]) for w in targets):
                problem(f"{name_of(service)}: targetPort {target!r} is not a named port of its pods")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind.get(kind, []):
            selector = (obj["spec"].get("selector") or obj["spec"].get("podSelector") or {}).get("matchLabels", {})
            targets = pods_matching(selector)
            if not targets:
                problem(f"{name_of(obj)}: selector {selector} matches no pods")
            for rule in obj["spec"].get("ingress", []):
                for port in rule.get("ports", []):
                    named = port.get("port")
                    if isinstance(named, str) and not all(named in pod_ports(w["spec"]["template"]) for w in targets):
                        problem(f"{name_of(obj)}: port {named!r} is not a named port of its pods")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]
        if not any(w["kind"] == target["kind"] and w["metadata"]["name"] == target["name"] for w in workloads):
            problem(f"{name_of(hpa)}: scales {target['kind']}/{target['name']}, which is not rendered")
    for monitor in by_kind.get("ServiceMonitor", []):
        for error in jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).iter_errors(monitor):
            problem(f"{name_of(monitor)}: {'.'.join(map(str, error.path))}: {error.message}")
        selector = monitor["spec"].get("selector", {}).get("matchLabels", {})
        selected = [s for s in services if matches(selector, s["metadata"].get("labels", {}))]
        if not selected:
            problem(f"{name_of(monitor)}: selector {selector} matches no Service")
        for endpoint in monitor["spec"].get("endpoints", []):
            for service in selected:
                if endpoint.get("port") not in {p.get("name") for p in service["spec"]["ports"]}:
                    problem(f"{name_of(monitor)}: port {endpoint.get('port')!r} is not a port of {name_of(service)}")
    deployments = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "weir"]
    if len(deployments) != 1:
        problem("no Deployment/weir rendered")
    else:
        check_weir(deployments[0], config_maps, weir)

    for message in problems:
        print(f"{rendered}: {message}", file=sys.stderr)
    print(f"{rendered}: {len(objects)} objects, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
