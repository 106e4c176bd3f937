"""The seeded fuzzer (tests/fuzzing.py) against the real service: only 200 or 4xx answers (to
requests, odd headers included), every data-channel message followed by a live reply, no
logged exception, /healthz answering throughout, no peers or threads left, bounded memory.

`AVATARCAM_FUZZ_CASES` and `AVATARCAM_FUZZ_SEED` change the run; `benchmarks/bench_fuzz.py`
runs it longer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import aiohttp
import pytest

from tests import fuzzing
from tests.test_serve import base_url, running, shared_config, until

pytestmark = pytest.mark.slow

CASES = int(os.environ.get("AVATARCAM_FUZZ_CASES", "1200"))
SEED = int(os.environ.get("AVATARCAM_FUZZ_SEED", "1313"))
MEMORY_GROWTH_MB = 150.0  # RSS growth allowed after the first 200 cases (allocator slack, caches)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_fuzzed_offers_controls_and_websocket_messages(
    tiny_avatar: Path, driver_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Limits high enough that no valid-looking offer is refused as busy: every answer must be
    # 200 or a 4xx; peers that parse but never connect are closed after the connect timeout.
    config = shared_config(
        tiny_avatar,
        driver_video,
        max_sessions=10_000,
        max_per_client=10_000,
        offers_per_minute=10**6,
        connect_timeout=1.0,
        admission="limit",
        operator_token="fuzz-operator",
    )
    before = {t.ident for t in threading.enumerate()}
    caplog.set_level(logging.WARNING)

    async def scenario() -> tuple[fuzzing.Report, int]:
        async with running(config) as server:
            report = await fuzzing.run(server, CASES, SEED, headers={"Authorization": "Bearer fuzz-operator"})
            await until(lambda: not server.service.peers, "every fuzzed peer to be closed")
            async with aiohttp.ClientSession() as http, http.get(base_url(server) + "healthz") as r:
                final = r.status
        return report, final

    report, final = asyncio.run(scenario())
    print(f"fuzz: seed {SEED}, {report.cases} cases, statuses {dict(sorted(report.statuses.items()))}")
    print(f"fuzz: websocket replies {dict(report.ws_replies)}; max peers at once {report.max_peers}")
    print(f"fuzz: {report.channel_messages} data-channel messages over {report.channel_connects} connection(s)")
    print(f"fuzz: cases {dict(sorted(report.labels.items()))}")
    print(f"fuzz: rss MB {[round(m) for m in report.rss_mb]}")
    assert report.cases == CASES >= 1000 or "AVATARCAM_FUZZ_CASES" in os.environ
    assert report.server_errors == []
    assert set(report.statuses) <= {200, 101} | set(range(400, 500)), report.statuses
    assert sum(v for k, v in report.statuses.items() if 400 <= k < 500) > CASES // 3
    assert report.channel_failures == [], report.channel_failures[:5]
    if CASES >= 200:  # every input class was sent
        assert report.channel_messages > 0 and report.channel_connects >= 1
        assert {label.split(":")[0] for label in report.labels} == {"offer", "control", "ws", "headers", "channel"}
        assert any(label.startswith("offer:multi-") for label in report.labels)
    assert report.health_failures == 0 and final == 200
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == [], [f"{r.name}: {r.getMessage()}" for r in logged[:5]]
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert left == [], left
    if len(report.rss_mb) >= 3:
        growth = max(report.rss_mb[2:]) - report.rss_mb[1]
        assert growth < MEMORY_GROWTH_MB, report.rss_mb
