"""Ray for a study: start it locally or join a cluster (within a deadline), check that trials fit on a
node, place the tracking sink next to the driver, and clean trial work folders on every node."""

from __future__ import annotations

import logging
import os
import socket
import time

from pace.study import SpecError
from pace.study.trial import remove_work_dirs

#: seconds to wait for the cluster named by --address to answer (``--connect-timeout``)
CONNECT_TIMEOUT_S = 60.0


def quiet_ray() -> None:
    """Ray's output that says nothing about the study: Tune's boxed header and TensorBoard hint (the
    legacy output engine honours verbose=0), "operation took 0.5 s" lines (threshold read when
    ray.tune is imported), and the token-auth notice of a local cluster pace starts and stops itself."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "10")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def _endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) that ``ray.init(address=...)`` connects to first, or None when it cannot be told
    here (then Ray's own error stands)."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    if not address.startswith("ray://"):
        try:  # "auto", RAY_ADDRESS, localhost: resolved the way ray.init resolves them
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address) or ""
        except Exception:  # noqa: BLE001 - a private API; fall back to the address as written
            pass
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Return once the cluster's bootstrap port accepts a connection; SpecError after ``timeout_s``.

    ``ray.init`` retries an address where nothing answers for many minutes; this bounds it."""
    where = _endpoint(address)
    if where is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(where, timeout=max(0.1, min(5.0, left))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            raise SpecError(
                f"--address {address}: no Ray cluster answered at {where[0]}:{where[1]} within {timeout_s:g} s "
                f"({reason}); check that the cluster is up (`ray status` on its head node), that the address is "
                "the head node's (`ray start --head` prints it) and that this machine can reach that port, "
                "or wait longer with --connect-timeout")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def ensure_ray(address: str | None, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Start local Ray (all cores, no dashboard) or connect to ``address``; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        wait_for_cluster(address, connect_timeout_s)
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = "" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else (
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give its token "
                "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)")
            raise SpecError(f"--address {address}: cannot connect to the Ray cluster ({first[:300]}){hint}") from None
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cpus, include_dashboard=False)
    return True


def check_resources(spec, out, can_grow: bool = False) -> None:
    """A trial asking for more of a resource than any node has would wait forever: say so now. On a
    cluster (``--address``) an autoscaler may still add such a node: a note, not an error."""
    import ray

    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, amount in need.items():
        if amount and not any(r.get(key, 0) >= amount for r in nodes):
            best = max((r.get(key, 0) for r in nodes), default=0)
            if can_grow:
                out(f"note: each trial asks for {amount:g} {key} and no node has that many now (largest: "
                    f"{best:g}); trials wait until the autoscaler adds such a node")
                continue
            raise SpecError(f"resources.{key.lower()}: each trial asks for {amount:g} {key}, but no node of the "
                            f"Ray cluster has that many (largest: {best:g}); lower resources.{key.lower()} "
                            "in the spec or add such a node")


def sink_actor(uri: str, journal: str):
    """The MLflow sink as an actor pinned to this (the driver's) node: a server bound to 127.0.0.1
    here is reachable, and an SQLite store gets one writer."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pace.journal import JournaledSink

    node = ray.get_runtime_context().get_node_id()
    # Not awaited: it starts (seconds: importing mlflow) while Tune starts
    return ray.remote(JournaledSink).options(
        num_cpus=0, max_concurrency=1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote(uri, journal)


def remove_work_dirs_everywhere(instance: str) -> None:
    """Trial work folders of this instance on every live node (a killed trial never removes its own)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remove_work_dirs(instance)
    try:
        task = ray.remote(remove_work_dirs).options(num_cpus=0)
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(instance) for n in ray.nodes() if n.get("Alive")]
        ray.wait(refs, num_returns=len(refs), timeout=30)
    except Exception:  # Ray already going down (Ctrl-C twice): the local folder is gone at least
        pass
