"""The machines a plan is checked against: accelerator memory, instance types, and the node types
of a cluster file (`ray up`'s cluster.yaml, a KubeRay RayJob) or of a live Ray cluster.

Accelerators are named as Ray names them (``ray.util.accelerators``; a node offers
``accelerator_type:<name>`` as a resource), so a node type here, a training run's or scoring
pool's ``accelerator_type`` and Ray's placement all speak of the same thing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

from prefscale.errors import PrefscaleError

GB = 1e9  # accelerator memory is sold in decimal gigabytes
GIB = 2**30

# Memory per accelerator, in GB as its vendor states it. Ray's plain "A100" label does not say
# which size a node has: it is taken as the smaller one.
ACCELERATOR_GB = {"T4": 16, "V100": 16, "A10G": 24, "L4": 24, "L40S": 48, "A100": 40, "A100-40G": 40, "A100-80G": 80,
                  "H100": 80, "H200": 141, "B200": 180}

# AWS instance types: (vCPUs, host memory GiB, accelerators, accelerator type).
INSTANCE_TYPES = {
    "m6i.2xlarge": (8, 32, 0, None), "m6i.4xlarge": (16, 64, 0, None), "m6i.8xlarge": (32, 128, 0, None),
    "r6i.2xlarge": (8, 64, 0, None), "r6i.4xlarge": (16, 128, 0, None), "r6i.8xlarge": (32, 256, 0, None),
    "g5.xlarge": (4, 16, 1, "A10G"), "g5.2xlarge": (8, 32, 1, "A10G"), "g5.12xlarge": (48, 192, 4, "A10G"), "g5.48xlarge": (192, 768, 8, "A10G"),
    "g6.2xlarge": (8, 32, 1, "L4"), "g6.12xlarge": (48, 192, 4, "L4"),
    "g6e.2xlarge": (8, 64, 1, "L40S"), "g6e.12xlarge": (48, 384, 4, "L40S"), "g6e.48xlarge": (192, 1536, 8, "L40S"),
    "p4d.24xlarge": (96, 1152, 8, "A100-40G"), "p4de.24xlarge": (96, 1152, 8, "A100-80G"),
    "p5.48xlarge": (192, 2048, 8, "H100"), "p5e.48xlarge": (192, 2048, 8, "H200"), "p5en.48xlarge": (192, 2048, 8, "H200"),
}


@dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float
    memory_gib: float  # host memory
    gpus: int = 0
    accelerator: str | None = None
    head: bool = False
    max_nodes: int = 1

    @property
    def gpu_gb(self) -> float:
        return ACCELERATOR_GB.get(self.accelerator or "", 0) if self.gpus else 0

    def describe(self) -> str:
        gpus = f"{self.gpus} x {self.accelerator} {self.gpu_gb:g} GB, " if self.gpus else ""
        return f"{self.name} ({gpus}{self.memory_gib:g} GiB host{', head' if self.head else ''})"


def _accelerator_resource(resources: dict) -> str | None:
    names = [key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")]
    return names[0] if names else None


def _from_instance(name: str, instance: str, resources: dict, head: bool, max_nodes: int) -> NodeType:
    if instance not in INSTANCE_TYPES:
        raise PrefscaleError(f"node type {name}: instance type {instance} is not in prefscale's table (prefscale/plan/hardware.py); "
                             "add it there with its vCPUs, memory and accelerators")
    cpus, memory, gpus, accelerator = INSTANCE_TYPES[instance]
    return NodeType(name, resources.get("CPU", cpus), memory, int(resources.get("GPU", gpus)), _accelerator_resource(resources) or accelerator,
                    head, max_nodes)


def cluster_yaml_nodes(document: dict) -> list[NodeType]:
    """Node types of a Ray cluster launcher file (AWS: instance types from the table above)."""
    head = document.get("head_node_type")
    nodes = []
    for name, spec in (document.get("available_node_types") or {}).items():
        instance = (spec.get("node_config") or {}).get("InstanceType", "")
        nodes.append(_from_instance(name, instance, spec.get("resources") or {}, name == head, 1 if name == head else spec.get("max_workers", 0)))
    return nodes


_QUANTITY = re.compile(r"^(?P<number>[\d.]+)(?P<unit>Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(value: str | int | float) -> float:
    match = _QUANTITY.match(str(value))
    if not match:
        raise PrefscaleError(f"cannot read the Kubernetes quantity {value!r}")
    return float(match["number"]) * _UNITS[match["unit"]]


def _resources(value: str | None) -> dict:
    """rayStartParams.resources: JSON, which KubeRay's examples quote once more ('"{\\"GPU\\": 1}"')."""
    parsed = json.loads(value) if value else {}
    return json.loads(parsed) if isinstance(parsed, str) else parsed


def _pod_node(name: str, group: dict, head: bool) -> NodeType:
    container = group["template"]["spec"]["containers"][0]
    limits = (container.get("resources") or {}).get("limits") or {}
    params = group.get("rayStartParams") or {}
    resources = _resources(params.get("resources"))
    gpus = int(_quantity(limits.get("nvidia.com/gpu", 0)))
    return NodeType(name, _quantity(limits.get("cpu", 0)), _quantity(limits.get("memory", 0)) / GIB, gpus, _accelerator_resource(resources),
                    head, 1 if head else group.get("maxReplicas", group.get("replicas", 1)))


def rayjob_nodes(document: dict) -> list[NodeType]:
    """Pod groups of a KubeRay RayJob (or RayCluster): limits, and the accelerator each declares in
    rayStartParams.resources as accelerator_type:<name> (Kubernetes does not tell Ray which GPU it is)."""
    spec = document["spec"].get("rayClusterSpec", document["spec"])
    nodes = [_pod_node("head", spec["headGroupSpec"], head=True)]
    return nodes + [_pod_node(group["groupName"], group, head=False) for group in spec.get("workerGroupSpecs", [])]


def file_nodes(path: str) -> list[NodeType]:
    """Node types of a cluster.yaml or a RayJob manifest."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except FileNotFoundError:
        raise PrefscaleError(f"cluster file not found: {path}; pass cluster.yaml or k8s/rayjob.yaml") from None
    if isinstance(document, dict) and document.get("kind") in ("RayJob", "RayCluster"):
        return rayjob_nodes(document)
    if isinstance(document, dict) and "available_node_types" in document:
        return cluster_yaml_nodes(document)
    raise PrefscaleError(f"{path} is neither a Ray cluster launcher file (available_node_types) nor a KubeRay RayJob/RayCluster")


def live_nodes(nodes: list[dict]) -> list[NodeType]:
    """The alive nodes of ``ray.nodes()``, one node type each."""
    found = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        found.append(NodeType(node.get("NodeManagerHostname", node["NodeID"][:8]), resources.get("CPU", 0), resources.get("memory", 0) / GIB,
                              int(resources.get("GPU", 0)), _accelerator_resource(resources), "node:__internal_head__" in resources))
    return found
