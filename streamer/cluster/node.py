"""`avatarcam node`: join this machine to a cluster as a node that advertises its capacity.

A node advertises how many avatar streams it holds as the custom resource `avatar_streams`;
each session actor reserves one, so Ray never places more on it. The figure comes from
measurement: on the project's 2-core CPU machine one driving session holds 30 fps and a second
does not (issue 23), hence the default of 1; a GPU node advertises what the GPU check's
capacity figure says it holds (docs/cluster.md).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from streamer.cluster.names import RESOURCE

DEFAULT_STREAMS = 1
"""Streams of one CPU node, as measured on the project's 2-core machine (one at 30 fps)."""


class NodeError(RuntimeError):
    """The node cannot be started with these options; the message says what to change."""


@dataclass(frozen=True)
class NodeConfig:
    """Options of `avatarcam node`.

    Attributes:
        address: the head's address (host:port) to join; None with `head`.
        head: start the cluster's head here instead of joining one.
        port: the head's GCS port (with `head`).
        streams: avatar streams this node advertises (None: DEFAULT_STREAMS; 0 on a head).
        num_cpus: CPUs the node gives Ray (None: Ray counts them).
        num_gpus: GPUs the node gives Ray (None: Ray counts them).
        object_store_mb: the node's object store size (None: Ray's default).
        start: run `ray start` (without it the command is only printed).
    """

    address: str | None = None
    head: bool = False
    port: int = 6379
    streams: int | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int | None = None
    start: bool = False


def ray_binary() -> str:
    """`ray` beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        raise NodeError("`ray` is not installed: pip install 'avatarcam[cluster]'")
    return found


def command(config: NodeConfig) -> list[str]:
    """The `ray start` command line for `config`."""
    if config.head == (config.address is not None):
        raise NodeError("give --address HOST:PORT to join a cluster, or --head to start one (not both)")
    streams = config.streams if config.streams is not None else (0 if config.head else DEFAULT_STREAMS)
    if streams < 0:
        raise NodeError(f"--streams {streams}: a node holds 0 or more streams")
    argv = [ray_binary(), "start"]
    argv += ["--head", f"--port={config.port}"] if config.head else [f"--address={config.address}"]
    argv.append("--resources=" + json.dumps({RESOURCE: streams}))
    if config.num_cpus is not None:
        argv.append(f"--num-cpus={config.num_cpus}")
    if config.num_gpus is not None:
        argv.append(f"--num-gpus={config.num_gpus}")
    if config.object_store_mb is not None:
        argv.append(f"--object-store-memory={config.object_store_mb * 1024 * 1024}")
    return argv


def run(config: NodeConfig) -> int:
    argv = command(config)
    print(shlex.join(argv), flush=True)
    if not config.start:
        return 0
    return subprocess.run(argv, check=False).returncode
