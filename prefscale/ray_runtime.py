"""Start or join Ray the same way from the CLI, the pipeline and the Ray job entrypoints."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator

from prefscale.config import RayConfig
from prefscale.errors import PrefscaleError


def _reachable(address: str, timeout: float = 5.0) -> bool:
    """A quick TCP probe: ray.init retries an unreachable GCS for minutes before failing."""
    host_port = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not port.isdigit():
        return True  # "auto" and other forms: let Ray resolve them
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def cluster_address(settings: RayConfig) -> str | None:
    """The cluster to join, or None to start a local Ray. Under `ray job submit` the job's cluster
    is in RAY_ADDRESS: join it rather than start one."""
    address = settings.address or os.environ.get("RAY_ADDRESS")
    return None if address == "local" else address


def joined_cluster(settings: RayConfig) -> bool:
    """Whether the run joins a running cluster (which an autoscaler may grow) rather than starting its own Ray."""
    return cluster_address(settings) is not None


_SESSION = {"joined": False, "scale_up_timeout_s": RayConfig().scale_up_timeout_s, "rehearse_gpus": False}  # the Ray this process started or joined


# Environment a driver that joins a cluster hands to every worker it starts (the nodes an autoscaler adds
# never saw this shell): a hub token for gated models, and what a smoke run sets for its own hub cache.
# Under `ray job submit` the job's runtime environment already carries them (prefscale submit puts them there).
FORWARDED_ENV = ["HF_TOKEN"]


VERBOSE = "PREFSCALE_VERBOSE"  # `prefscale --verbose`: Ray's own log lines too


def verbose() -> bool:
    return os.environ.get(VERBOSE, "") not in ("", "0")


def quiet_libraries() -> None:
    """Unless --verbose, keep the libraries' notices that say nothing about this run (deprecations,
    bitsandbytes' optional kernel package, MLflow's schema set-up) out of the user's terminal.
    Called by the CLI and at the start of every training worker and scoring actor (own processes)."""
    if verbose():
        return
    import logging
    import warnings

    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # Ray Data's execution plans; it reads this when it configures its loggers
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # its schema set-up; read when mlflow is imported
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("bitsandbytes", "mlflow", "alembic", "optuna", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def session() -> dict:
    """Whether this process joined a running cluster (which may grow) and how long a stage waits for it to."""
    return dict(_SESSION)


@contextlib.contextmanager
def _own_address() -> Iterator[None]:
    """While a local Ray starts: its GCS on a port picked here, and that address in the environment its
    processes inherit, so Ray's own processes that look a cluster up (Ray Train's placement-group
    cleaner) find this run's Ray, never another run's on the same machine. The driver's environment
    is restored after, so what it launches later starts Ray anew too."""
    from ray._private.services import get_node_ip_address

    with socket.socket() as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    scoped = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}
    saved = {name: os.environ.get(name) for name in scoped}
    os.environ.update(scoped)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def ensure_ray(settings: RayConfig = RayConfig()) -> None:
    """Join ``settings.address`` (a running cluster), or start a local Ray in-process when it is None.

    A joined cluster is used with the authentication its environment names (token auth: RAY_AUTH_MODE=token
    and the token, as cluster.yaml and the RayJob set up); only the local Ray this process starts for
    itself, reachable from this machine alone, runs without it unless RAY_AUTH_MODE says otherwise."""
    # Ray Train's controller polls workers at this interval; its 2 s default adds that much to
    # every report (checkpoint). Must be set before Ray starts so its processes inherit it.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray

    if ray.is_initialized():
        return
    # Loaded after ray.init, torch can find its native libraries' static TLS used up and die with
    # "Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so" (seen in `ray job submit` drivers
    # of a two-node cluster, tests/test_multinode.py); loaded before, it never does.
    import torch  # noqa: F401
    address = cluster_address(settings)
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray Train's per-worker log files and console handler: with them every print of a worker reached
        # the terminal twice and each report was announced; its processes inherit this environment.
        os.environ.setdefault("RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING", "0")
    if not verbose():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray Tune's boxed tables: the legacy reporter honours verbose=0
        import logging

        logging.getLogger("ray").setLevel(logging.WARNING)  # the driver's INFO lines (connecting, dataset plans, Tune tables)
        quiet_libraries()
    if address is not None and not _reachable(address):
        raise PrefscaleError(f"cannot reach Ray at {address}: nothing listens there; start the cluster (ray up / ray start --head) or fix ray.address")
    kwargs = {"include_dashboard": False, "log_to_driver": True} if address is None else {}
    if not verbose():  # workers' own Ray warnings (a placement-group cleaner that cannot reach a dashboard we never start);
        kwargs["logging_config"] = ray.LoggingConfig(log_level="ERROR")  # our progress lines are prints: they still come through
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    if address is not None and forwarded and "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # not a job's driver: its env is the job's
        kwargs["runtime_env"] = {"env_vars": forwarded}
    if address is None:
        # Ray Data buffers blocks up to a share of the object store; a fixed store keeps a
        # million-row job's memory where a small one's is instead of growing with the input.
        kwargs.update(num_cpus=settings.num_cpus, num_gpus=settings.num_gpus,
                      object_store_memory=settings.object_store_mb << 20 if settings.object_store_mb else None)
    _SESSION.update(joined=address is not None, scale_up_timeout_s=settings.scale_up_timeout_s, rehearse_gpus=settings.rehearse_gpus)
    try:
        with _own_address() if address is None else contextlib.nullcontext():
            ray.init(address=address or "local", **kwargs)  # "local": a new Ray, never whichever `ray start` ran last
    except ConnectionError as exc:
        raise PrefscaleError(f"cannot reach Ray at {address}: {str(exc).splitlines()[0]}; start the cluster or fix ray.address") from None
    except Exception as exc:  # noqa: BLE001 - Ray raises its own types for an authentication failure
        if "auth" not in str(exc).lower():
            raise
        raise PrefscaleError(f"the Ray cluster at {address} refused this process: it requires token authentication; set RAY_AUTH_MODE=token "
                             f"and its token (RAY_AUTH_TOKEN, or the file `ray get-auth-token` writes)") from None
    if address is not None:  # say which cluster "auto" (or RAY_ADDRESS) found: never a silent join
        print(f"joined the Ray cluster at {ray.get_runtime_context().gcs_address} (ray.address: {address})", file=sys.stderr, flush=True)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = os.isatty(2)
    except ImportError:
        pass
