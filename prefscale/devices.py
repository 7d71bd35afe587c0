"""The device a scorer or training worker runs on: a GPU when its config gave it one, or a loud error.

A silent CPU fallback would let a misconfigured node (no driver, a CPU build of torch) score a
9B model on CPU for days; failing at once, naming the node, costs minutes.
"""

from __future__ import annotations

import socket

from prefscale.errors import PrefscaleError


def node_name() -> str:
    """Host name and, inside Ray, the node's IP: what a user looks up in `ray status`."""
    try:
        import ray

        if ray.is_initialized():
            return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    except ImportError:
        pass
    return socket.gethostname()


def torch_device(use_gpu: bool, asked_by: str, index: int = 0, rehearse: bool = False):
    """``cuda:index`` when ``use_gpu``, else the CPU; a GPU asked for but not visible is an error
    (``rehearse``: the CPU instead, for a rehearsal of a GPU recipe's placement on CPU nodes)."""
    import torch

    if not use_gpu or (rehearse and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PrefscaleError(f"{asked_by} was given a GPU but node {node_name()} sees no CUDA device (torch {torch.__version__}); "
                             f"install the NVIDIA driver and torch's CUDA build there, or stop asking for GPUs")
    return torch.device(f"cuda:{index}")


def _cuda_on_this_node(asked_by: str) -> str | None:
    """The error line when this node cannot use its GPU from torch, else None."""
    try:
        torch_device(True, asked_by)
    except PrefscaleError as exc:
        return str(exc)
    return None


def check_gpu_nodes(asked_by: str, timeout_s: float = 120) -> None:
    """Probe every live node that offers GPUs to Ray with a task holding a sliver of one GPU.

    Ray Train picks NCCL for GPU workers, and a node without CUDA then fails inside process-group
    set-up with an error that names neither the node nor the cause; this names both, before any
    worker starts. (A fraction of a GPU makes Ray expose the device to the probe.)
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
    probe = ray.remote(num_cpus=0, num_gpus=0.001)(_cuda_on_this_node)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(asked_by) for node in nodes]
    problems = [p for p in ray.get(refs, timeout=timeout_s) if p]
    if problems:
        raise PrefscaleError("; ".join(problems))


def raised_prefscale_error(exc: BaseException) -> PrefscaleError | None:
    """The PrefscaleError a Ray task, actor or Train worker raised, from the error Ray re-raised here."""
    marker = "PrefscaleError: "
    lines = [line for line in str(exc).splitlines() if marker in line]
    return PrefscaleError(lines[-1].split(marker, 1)[1].strip()) if lines else None
