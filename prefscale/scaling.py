"""Ask the cluster for what a stage needs, and wait for the autoscaler to bring it.

A cluster whose GPU node types start at zero workers has no GPU until something asks for one.
A stage therefore asks (a placement group of its workers' or actors' bundles, which the
autoscaler sees as demand, plus ``request_resources``), waits up to ``ray.scale_up_timeout_s``
while printing what it waits for, and fails with one line naming what never came. A local Ray
started by this process cannot grow: there, missing resources are refused at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from prefscale.errors import PrefscaleError
from prefscale.ray_runtime import session

ACCELERATOR_SLIVER = 0.001  # what a bundle asks of a node's accelerator_type:<name> resource (Ray's own convention)
PROGRESS_EVERY_S = 30.0


def accelerator(name: str | None) -> dict[str, float]:
    """The resource that pins a bundle to nodes of one accelerator type."""
    return {f"accelerator_type:{name}": ACCELERATOR_SLIVER} if name else {}


def _totals(bundles: list[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            totals[key] = totals.get(key, 0) + value
    return totals


def _describe(resources: dict[str, float], zeros: bool = False) -> str:
    return ", ".join(f"{value:g} {key}" for key, value in sorted(resources.items()) if value or zeros)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def await_resources(bundles: list[dict[str, float]], what: str, log: Callable[[str], None] = _stderr) -> None:
    """Return once the cluster can place ``bundles`` at once; ask its autoscaler for them on a joined cluster."""
    import ray
    from ray.autoscaler.sdk import request_resources
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [{k: v for k, v in b.items() if v} for b in bundles]
    need = _totals(bundles)
    joined, timeout = session()["joined"], session()["scale_up_timeout_s"]
    if not joined:
        have = ray.cluster_resources()
        short = {k: v for k, v in need.items() if have.get(k, 0) + 1e-9 < v}
        if short:
            raise PrefscaleError(f"{what} need {_describe(need)} but this local Ray has {_describe({k: have.get(k, 0) for k in need}, zeros=True)}; "
                                 f"lower the request, or join a cluster that has them (ray.address)")
        return
    group = placement_group(bundles, strategy="PACK")
    request_resources(bundles=bundles)
    started = noted = time.monotonic()
    try:
        while True:
            ready, _ = ray.wait([group.ready()], timeout=5)
            if ready:
                return
            waited = time.monotonic() - started
            have = ray.cluster_resources()
            if waited >= timeout:
                raise PrefscaleError(f"{what} asked the cluster for {_describe(need)} and it never came within {timeout:g} s "
                                     f"(it has {_describe({k: have.get(k, 0) for k in need}, zeros=True)}); check the autoscaler's node types "
                                     f"and their max_workers (`ray status`), or raise ray.scale_up_timeout_s")
            if time.monotonic() - noted >= PROGRESS_EVERY_S:
                noted = time.monotonic()
                log(f"  waiting {waited:.0f}s for the autoscaler: {what} need {_describe(need)}, the cluster has "
                    f"{_describe({k: have.get(k, 0) for k in need}, zeros=True)} now")
    finally:
        remove_placement_group(group)
        request_resources(bundles=[])  # the stage's own requests (Train's placement group, the actor pool) take over
