"""Ray around a study: connecting (a fresh local Ray or a cluster), what the cluster can
hold, checks that refuse a study the cluster can never run (resources, node-local storage
on a multi-machine cluster), Ray Tune's logging, and Ctrl-C as a first-class event."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..errors import StudyError
from .space import SearchSpace


def init_ray(address: str | None, verbose: int):
    import ray

    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose > 1, "configure_logging": True,
                          "logging_level": "WARNING"}
    if not address:
        # "local": always a fresh Ray on this machine, never a cluster recorded by an earlier
        # `ray start` (a stale /tmp/ray/ray_current_cluster or RAY_ADDRESS would hijack it)
        ray.init(address="local", **kw)
        return ray
    try:
        ray.init(address=address, **kw)
    except (ConnectionError, RuntimeError) as e:
        auth = "auth" in f"{e} {e.__cause__}".lower()
        hint = ("the cluster uses token authentication: copy its token to ~/.ray/auth_token (or set "
                "RAY_AUTH_TOKEN_PATH) and export RAY_AUTH_MODE=token" if auth else
                "check the address (`ray status` on the head prints it) and that this machine can reach port 6379/10001")
        raise StudyError(f"cannot connect to the Ray cluster at --address {address}: {hint}") from e
    return ray


def slots(space: SearchSpace, total: dict) -> int:
    """How many trials the cluster's CPUs/GPUs can hold at once."""
    r = space.resources
    n = int(float(total.get("CPU", 0)) // r.cpu) if r.cpu > 0 else 10**6
    if r.gpu > 0:
        n = min(n, int(float(total.get("GPU", 0)) // r.gpu))
    return max(1, n)


def check_resources(space: SearchSpace, ray_mod, field: str = "resources") -> None:  # noqa: D401
    """Refuse a per-trial request the cluster can never satisfy (instead of pending forever).
    ``field``: the space block that asked (``resources``, or ``promote`` for the promoted trials)."""
    total = ray_mod.cluster_resources()
    cpu, gpu = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    r = space.resources
    if r.gpu > 0 and gpu == 0:
        raise StudyError(f"{space.source}: {field}.gpu={r.gpu:g} per trial but the Ray cluster has no GPU; "
                         f"set {field}.gpu: 0 to train on CPU, or connect to a GPU cluster with --address")
    if r.gpu > gpu:
        raise StudyError(f"{space.source}: {field}.gpu={r.gpu:g} per trial but the cluster has {gpu:g} GPU(s) in all")
    if r.cpu > cpu:
        raise StudyError(f"{space.source}: {field}.cpu={r.cpu:g} per trial but the cluster has {cpu:g} CPU(s) in all; "
                         f"lower {field}.cpu")


SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "9p", "efs")


def filesystem_type(path: str | Path, mounts: str | None = None) -> str:
    """The filesystem type of the mount holding ``path`` (longest mount-point prefix)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    p = str(Path(path).resolve())
    best, fstype = "", "unknown"
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and (p == parts[1] or p.startswith(parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype


def cluster_hosts(ray_mod) -> int:
    """Machines in the Ray cluster (alive nodes with distinct addresses; several nodes on one host share its disk)."""
    return len({n.get("NodeManagerAddress") for n in ray_mod.nodes() if n.get("Alive")})


def check_storage(storage: str, n_hosts: int, mounts: str | None = None) -> None:
    """On a cluster spanning several machines trial checkpoints must go to storage every node reaches."""
    if n_hosts <= 1 or "://" in storage:
        return
    fstype = filesystem_type(storage, mounts)
    if fstype in SHARED_FS or fstype.startswith("fuse."):
        return
    raise StudyError(f"--storage-path {storage} is on a node-local filesystem ({fstype}) but the Ray cluster has "
                     f"nodes on {n_hosts} machines: trials on other machines could not save or restore checkpoints; pass shared "
                     f"storage, e.g. --storage-path s3://BUCKET/regtune, gs://BUCKET/regtune or an NFS mount")


@contextlib.contextmanager
def catch_interrupt(tracker_ref: list):
    """Ctrl-C (SIGINT) as a first-class event: the first one asks Ray Tune to stop (its
    SIGUSR1 path: trials checkpoint, the experiment state is saved) and marks the study
    interrupted; a second one stops at once."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    state = {"n": 0}

    def handler(sig, frame):
        state["n"] += 1
        for t in tracker_ref:
            t.interrupted = True
        if state["n"] == 1:
            print("\nregtune search: Ctrl-C: stopping the study (running trials are labelled interrupted; "
                  "Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            if hasattr(signal, "SIGUSR1"):
                os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler) if _main_thread() else None
    try:
        yield state
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def quiet_ray_tune() -> None:
    """Ray Tune logs each trial error with its traceback and ends with its own
    ``Tuner.restore(...)`` hint; regtune prints one line per failure and its own command.
    Ray's own progress output and its TensorBoard logger (which warns on every NaN of a
    diverged trial) are off; its JSON/CSV result files stay."""
    import logging
    import warnings

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        from optuna.exceptions import ExperimentalWarning

        warnings.filterwarnings("ignore", category=ExperimentalWarning)
    except ImportError:  # pragma: no cover
        pass

    for name in ("ray.tune", "ray.tune.tune", "ray.tune.execution.tune_controller", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


__all__ = ["init_ray", "slots", "check_resources", "filesystem_type", "cluster_hosts", "check_storage", "catch_interrupt",
           "quiet_ray_tune"]
