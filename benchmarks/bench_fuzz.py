"""A long run of the live service's fuzzer (tests/fuzzing.py; the CI test runs 1200 cases).

    .venv/bin/python benchmarks/bench_fuzz.py [--cases 20000] [--seed 1313] [AVATAR]

The real service with a shared file source (default: the shipped demo avatar and clip), the
same limits as tests/test_fuzz.py. Prints progress every 1000 cases and a JSON summary: the
answers by status (odd-header requests included), any 5xx with its case, records logged at
ERROR or with a traceback, data-channel messages sent and probes left unanswered, /healthz
failures, the most peers alive at once, RSS over time, and whether every peer was closed at the
end. Exit status 1 when a 5xx, an ERROR record, an unanswered probe or a /healthz failure was
seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.provenance.identity import DEMO_AVATAR, DEMO_CLIP  # noqa: E402
from streamer.serve.config import ServeConfig  # noqa: E402
from streamer.serve.http import Server  # noqa: E402
from streamer.sinks.base import SinkSpec  # noqa: E402
from streamer.sources.base import SourceSpec  # noqa: E402
from tests import fuzzing  # noqa: E402


class ErrorRecords(logging.Handler):
    """Keeps what was logged at ERROR or with a traceback (the service promises neither)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            exc = record.exc_info[1] if record.exc_info else None
            cause = f" [{type(exc).__name__}: {exc}]" if exc is not None else ""
            self.records.append(f"{record.name}: {record.getMessage()[:300]}{cause[:300]}")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    config = ServeConfig(
        avatars=(args.avatar,),
        source=SourceSpec("file", str(args.video)),
        sinks=(SinkSpec("null"),),
        port=0,
        loop=True,
        backend=args.backend,
        max_sessions=10_000,
        max_per_client=10_000,
        offers_per_minute=10**6,
        connect_timeout=1.0,
        admission="limit",
        operator_token="fuzz-operator",
    )
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    server = Server(config)
    await server.startup()
    start = time.monotonic()

    def progress(report: fuzzing.Report) -> None:
        if report.cases % 1000 == 0:
            print(f"{report.cases} cases, {time.monotonic() - start:.0f} s, {dict(report.statuses)}", file=sys.stderr)

    try:
        report = await fuzzing.run(
            server, args.cases, args.seed, headers={"Authorization": "Bearer fuzz-operator"}, progress=progress
        )
        deadline = time.monotonic() + 30
        while server.service.peers and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        left = len(server.service.peers)
    finally:
        await server.shutdown()
        logging.getLogger().removeHandler(errors)
    return {
        "seed": args.seed,
        "cases": report.cases,
        "seconds": round(time.monotonic() - start, 1),
        "statuses": dict(sorted(report.statuses.items())),
        "server_errors": report.server_errors,
        "error_records": len(errors.records),
        "first_error_records": errors.records[:10],
        "channel_messages": report.channel_messages,
        "channel_connects": report.channel_connects,
        "channel_failures": report.channel_failures[:10],
        "health_failures": report.health_failures,
        "max_peers": report.max_peers,
        "peers_left": left,
        "rss_mb": [round(m) for m in report.rss_mb[:: max(1, len(report.rss_mb) // 20)]],
        "labels": dict(report.labels.most_common()),
        "ws_replies": dict(report.ws_replies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path, nargs="?", default=DEMO_AVATAR)
    parser.add_argument("--video", type=Path, default=DEMO_CLIP)
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1313)
    parser.add_argument("--backend", default="onnx")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    summary = asyncio.run(main_async(args))
    print(json.dumps(summary, indent=2))
    failed = summary["server_errors"] or summary["error_records"] or summary["channel_failures"]
    sys.exit(1 if failed or summary["health_failures"] else 0)


if __name__ == "__main__":
    main()
