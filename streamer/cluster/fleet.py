"""The fleet: connect to a Ray cluster, read its capacity, place and end session actors.

Capacity is Ray's own account of the `avatar_streams` resource that each node advertises
(`ray start --resources '{"avatar_streams": N}'`): a session reserves one, so Ray never places
more sessions on a node than it declared, and frees the share when the actor dies. Placement is
refused (`NoCapacity`) when no node has a share free; nothing here keeps a second count.

All calls block (Ray's API does); the gateway runs them in a thread.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray._private import state as ray_state  # actor states (ALIVE, PENDING_CREATION, ...): no dashboard needed
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from streamer.cluster.actor import ActorOptions, SessionFailed, SessionSpec, remote_class
from streamer.cluster.avatars import AvatarRef
from streamer.cluster.names import NAMESPACE, PREFIX, RESOURCE

log = logging.getLogger(__name__)


class FleetError(RuntimeError):
    """A cluster problem the caller reports as 503 (the message says what to do)."""


class RayDown(FleetError):
    """The Ray head cannot be reached."""


class NoCapacity(FleetError):
    """No node has an `avatar_streams` share free."""


class UnknownSession(LookupError):
    """No session of that name runs in the cluster."""


@dataclass(frozen=True)
class FleetConfig:
    """How the gateway reaches and uses the cluster.

    Attributes:
        address: the Ray head's GCS address (host:port, as `ray start --head` prints it).
        actor: resources and restart policy of each session actor.
        start_timeout: seconds a placed session may take to load its avatar and start.
        pending_grace: seconds a session may wait for a node before it counts as refused. Ray
            reports a starting worker (imports take seconds on a loaded node) and an actor
            waiting for a share alike (PENDING_CREATION), so this is long; the capacity check
            before placing refuses at once, this only settles a race between two gateways.
        release_timeout: seconds `end` waits for Ray to report the share free again.
        connect_timeout: seconds the head's port may take to accept a connection.
    """

    address: str = "127.0.0.1:6379"
    actor: ActorOptions = field(default_factory=ActorOptions)
    start_timeout: float = 180.0
    pending_grace: float = 60.0
    release_timeout: float = 30.0
    connect_timeout: float = 3.0


@dataclass(frozen=True)
class Capacity:
    total: float
    free: float

    def to_json(self) -> dict[str, float]:
        return {"total": self.total, "free": self.free, "used": self.total - self.free}


def _reachable(address: str, timeout: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout):
            return True
    except (OSError, ValueError):
        return False


class Fleet:
    """One connection to a Ray cluster and the sessions placed on it."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._actor_class: Any = None

    # ---- connection ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Join the cluster as a driver (once); RayDown when its head does not answer (checked
        on every call, so a head that went away is reported, not waited for)."""
        address = self.config.address
        down = RayDown(
            f"Ray head at {address} is not reachable: start it with "
            f"`ray start --head --port {address.rpartition(':')[2]}` (docs/cluster.md), or give the gateway "
            "its address with --ray-address"
        )
        if not _reachable(address, self.config.connect_timeout):
            raise down
        if ray.is_initialized():
            return
        try:
            ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise down from exc

    @property
    def actor_class(self) -> Any:
        if self._actor_class is None:
            self._actor_class = remote_class(self.config.actor)
        return self._actor_class

    # ---- capacity and nodes ----------------------------------------------------------------------

    def capacity(self) -> Capacity:
        self.connect()
        return Capacity(ray.cluster_resources().get(RESOURCE, 0.0), ray.available_resources().get(RESOURCE, 0.0))

    def nodes(self) -> list[dict[str, Any]]:
        """Live nodes with their streams (total and free) and address."""
        self.connect()
        free = ray_state.available_resources_per_node()
        out = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            node_id = node["NodeID"]
            total = node.get("Resources", {}).get(RESOURCE, 0.0)
            out.append(
                {
                    "node": node_id,
                    "address": node.get("NodeManagerAddress"),
                    "streams": total,
                    "free": free.get(node_id, {}).get(RESOURCE, 0.0),
                    "head": "node:__internal_head__" in node.get("Resources", {}),
                }
            )
        return out

    # ---- sessions --------------------------------------------------------------------------------

    def place(self, spec: SessionSpec, avatar: AvatarRef) -> dict[str, Any]:
        """Start `spec`'s session on a node with a free share and wait until it runs; its status.
        NoCapacity when no node has a share; SessionFailed (actor gone, share freed) when it
        cannot start there."""
        self.connect()
        free = self.capacity().free
        if free < self.config.actor.streams:
            raise self._no_capacity()
        handle = self.actor_class.options(name=PREFIX + spec.name, namespace=NAMESPACE, lifetime="detached").remote(
            spec, avatar
        )
        ready = handle.ready.remote(self.config.start_timeout)
        started = time.monotonic()
        try:
            while True:
                done, _ = ray.wait([ready], timeout=0.5)
                if done:
                    return dict(ray.get(ready))
                state = self._state(handle)
                if state == "PENDING_CREATION" and time.monotonic() - started > self.config.pending_grace:
                    raise self._no_capacity()  # another gateway took the share meanwhile
        except (RayTaskError, RayActorError, SessionFailed) as exc:
            self._kill(handle)
            self._wait_free(free)  # a refused session gives its share back before the caller hears of it
            raise SessionFailed(_cause(exc)) from None
        except BaseException:
            self._kill(handle)
            raise

    def _no_capacity(self) -> NoCapacity:
        capacity = Capacity(ray.cluster_resources().get(RESOURCE, 0.0), ray.available_resources().get(RESOURCE, 0.0))
        return NoCapacity(
            f"no capacity: all {capacity.total:g} avatar streams of the cluster are in use; "
            "end a stream or add a node (`avatarcam node --address HEAD --streams N`), then retry"
        )

    def _state(self, handle: Any) -> str:
        info = ray_state.actors(actor_id=handle._actor_id.hex())
        return str(info.get("State", "")) if info else ""

    def handle(self, name: str) -> Any:
        try:
            return ray.get_actor(PREFIX + name, namespace=NAMESPACE)
        except ValueError:
            raise UnknownSession(f"no session {name} runs in the cluster") from None

    def status(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        """One session's status; {"state": "restarting"|"unreachable", ...} while its actor is not
        answering (a node died and Ray is placing it again)."""
        handle = self.handle(name)
        try:
            return dict(ray.get(handle.status.remote(), timeout=timeout))
        except GetTimeoutError:
            return {"id": name, "state": self._state(handle).lower() or "unreachable"}
        except (RayActorError, RayTaskError) as exc:
            return {"id": name, "state": "failed", "error": _cause(exc)}

    def sessions(self) -> list[dict[str, Any]]:
        """Every session actor of the cluster with its status."""
        self.connect()
        names = ray.util.list_named_actors(all_namespaces=True)
        mine = sorted(
            n["name"][len(PREFIX) :] for n in names if n["namespace"] == NAMESPACE and n["name"].startswith(PREFIX)
        )
        out = []
        for name in mine:
            try:
                out.append(self.status(name))
            except UnknownSession:  # ended meanwhile
                continue
        return out

    def end(self, name: str) -> None:
        """Stop the session, kill its actor (no restart) and wait until its share is free."""
        handle = self.handle(name)
        before = self._free()
        try:
            ray.get(handle.stop.remote(), timeout=30.0)
        except Exception as exc:  # a dead or stuck session still gets killed
            log.warning("session %s did not stop cleanly: %s", name, _cause(exc))
        self._kill(handle)
        self._wait_free(before + self.config.actor.streams)

    def _free(self) -> float:
        return float(ray.available_resources().get(RESOURCE, 0.0))

    def _wait_free(self, at_least: float) -> None:
        """Wait (up to release_timeout) until Ray reports `at_least` streams free: a killed
        actor's share comes back a moment after the kill."""
        deadline = time.monotonic() + self.config.release_timeout
        while self._free() < at_least and time.monotonic() < deadline:
            time.sleep(0.2)

    def _kill(self, handle: Any) -> None:
        try:
            ray.kill(handle, no_restart=True)
        except Exception as exc:
            log.warning("could not kill a session actor: %s", exc)


def _cause(exc: BaseException) -> str:
    """The innermost message of a Ray error (its traceback text is for logs)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _cause(cause)
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
