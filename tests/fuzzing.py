"""A seeded fuzzer of the live service's inputs: `POST /offer`, `POST /api/control` and `/ws`.

Cases are drawn from one `random.Random(seed)`: a real aiortc offer truncated, with lines
dropped, repeated or shuffled, duplicated m-sections, mangled numbers, odd bytes and huge
attributes; JSON bodies of the wrong types, nested deeply, huge or not JSON at all; binary and
oversized websocket messages. `run` sends them to a running `Server` and reports what came
back. Used by `tests/test_fuzz.py` (CI) and `benchmarks/bench_fuzz.py` (long runs).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil
from aiortc import RTCConfiguration, RTCPeerConnection

from streamer.serve.http import Server

JUNK = ["", " ", "\x00", "\ufffd", "é", "\r\n", "a" * 300, "-1", "99999999999999999999", "NaN", "{", "💥", "\\", "%s"]
VALUES: list[Any] = [None, True, 0, -1, 2**64, 1.5, float("inf"), "", "x" * 5000, [], [1, [2]], {}, {"a": {}}, "pause"]


async def base_offer() -> str:
    """A real offer (video recvonly plus a data channel) from a peer that is then closed."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


@dataclass(frozen=True)
class Case:
    """One request: `route` ("offer", "control" or "ws"), what it carries, and a label."""

    route: str
    label: str
    json: Any = None
    data: bytes | None = None
    ws: list[str | bytes] = field(default_factory=list)


class Fuzzer:
    def __init__(self, seed: int, sdp: str) -> None:
        self.rng = random.Random(seed)
        self.lines = sdp.strip().split("\r\n")

    def case(self) -> Case:
        roll = self.rng.random()
        if roll < 0.55:
            return self.offer()
        if roll < 0.8:
            return self.control()
        return self.websocket()

    # ---- SDP ---------------------------------------------------------------------------------------

    def sdp(self) -> tuple[str, str]:
        rng, lines = self.rng, list(self.lines)
        how = rng.choice(
            ["truncate", "drop", "repeat", "shuffle", "duplicate-m", "numbers", "bytes", "huge", "mline", "many"]
        )
        if how == "truncate":
            text = "\r\n".join(lines)
            return how, text[: rng.randrange(len(text))]
        if how == "drop":
            for _ in range(rng.randint(1, 4)):
                lines.pop(rng.randrange(len(lines)))
        elif how == "repeat":
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(lines))
                lines.insert(i, lines[i])
        elif how == "shuffle":
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "duplicate-m":
            starts = [i for i, line in enumerate(lines) if line.startswith("m=")] + [len(lines)]
            k = rng.randrange(len(starts) - 1)
            section = lines[starts[k] : starts[k + 1]]
            lines += section * rng.choice([1, 2, 3, 40])  # a second video section is refused (400)
        elif how == "numbers":
            i = rng.randrange(len(lines))
            words = lines[i].split(" ")
            j = rng.randrange(len(words))
            words[j] = rng.choice(["-1", "0", "65536", "4294967296", "1e9", "", "x", str(rng.getrandbits(70))])
            lines[i] = " ".join(words)
        elif how == "bytes":
            text = list("\r\n".join(lines))
            for _ in range(rng.randint(1, 20)):
                text[rng.randrange(len(text))] = chr(rng.choice([0, 10, 13, 32, 61, 0xFFFD, rng.randrange(1, 0x3000)]))
            return how, "".join(text)
        elif how == "huge":
            lines.insert(rng.randrange(len(lines)), "a=" + rng.choice(["x", "fmtp:96 ", "candidate:"]) + "y" * 100_000)
        elif how == "mline":
            i = rng.choice([i for i, line in enumerate(lines) if line.startswith("m=")])
            lines[i] = rng.choice(
                ["m=video", "m=foo 9 UDP/TLS/RTP/SAVPF 96", "m=video 9 RTP/AVP", "m=audio 9 UDP/TLS/RTP/SAVPF 0", "m="]
            )
        else:
            for _ in range(rng.randint(5, 30)):
                lines.insert(rng.randrange(len(lines)), rng.choice(lines) + rng.choice(JUNK))
        return how, "\r\n".join(lines) + rng.choice(["\r\n", "", "\n"])

    def offer(self) -> Case:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            how, sdp = self.sdp()
            body: dict[str, Any] = {"sdp": sdp, "type": "offer"}
            if rng.random() < 0.3:
                body["options"] = rng.choice(
                    [
                        {"codec": rng.choice([*VALUES, "vp8", "h264"])},
                        {"background": rng.choice(VALUES)},
                        {"stamp": rng.choice(VALUES)},
                        rng.choice(VALUES),
                    ]
                )
            return Case("offer", f"sdp-{how}", json=body)
        if roll < 0.8:
            sdp = "\r\n".join(self.lines) + "\r\n"
            body = {"sdp": rng.choice([sdp, *VALUES]), "type": rng.choice(["offer", "answer", "pranswer", *VALUES])}
            for key in rng.sample(["sdp", "type", "options", "extra"], rng.randint(0, 2)):
                if rng.random() < 0.5:
                    body.pop(key, None)
                else:
                    body[key] = rng.choice(VALUES)
            return Case("offer", "json-types", json=body)
        return self.raw("offer")

    def raw(self, route: str) -> Case:
        rng = self.rng
        how = rng.choice(["binary", "not-json", "deep", "huge", "over-limit", "scalar"])
        if how == "binary":
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000)))
        elif how == "not-json":
            data = rng.choice([b"{", b"}", b"[1,", b'{"sdp": }', b"\xff\xfe{}", b"null null", b"{'a': 1}"])
        elif how == "deep":
            depth = rng.choice([100, 5000, 100_000])
            data = b"[" * depth + b"]" * depth
        elif how == "huge":
            data = json.dumps({"sdp": "v=0\r\n" + "a=x\r\n" * 40_000, "type": "offer"}).encode()
        elif how == "over-limit":
            data = b'{"sdp": "' + b"x" * 300_000 + b'"}'
        else:
            data = rng.choice([b"1", b'"offer"', b"true", b"[]", b"1e999"])
        return Case(route, f"raw-{how}", data=data)

    # ---- control ------------------------------------------------------------------------------------

    def control(self) -> Case:
        rng = self.rng
        if rng.random() < 0.25:
            return self.raw("control")
        body: Any = {
            "action": rng.choice(["pause", "resume", "calibrate", "background", "avatar", "explode", *VALUES]),
            "session": rng.choice([None, "main", "peer-0000", *VALUES]),
            "value": rng.choice(["learned", "blur", "image", "tiny", *VALUES]),
        }
        for key in rng.sample(list(body), rng.randint(0, 2)):
            del body[key]
        if rng.random() < 0.1:
            body = rng.choice(VALUES)
        return Case("control", "json", json=body)

    # ---- websocket ----------------------------------------------------------------------------------

    def websocket(self) -> Case:
        rng = self.rng
        messages: list[str | bytes] = []
        for _ in range(rng.randint(1, 4)):
            roll = rng.random()
            if roll < 0.5:
                message = {
                    "type": rng.choice(["control", "snapshot", *VALUES]),
                    "action": rng.choice([*VALUES, "pause", "resume"]),
                }
                if rng.random() < 0.5:
                    message["session"] = rng.choice([*VALUES, "main"])
                messages.append(json.dumps(message))
            elif roll < 0.7:
                messages.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 500))))
            elif roll < 0.8:
                messages.append("[" * 30_000 + "]" * 30_000 if rng.random() < 0.5 else "x" * 70_000)
            else:
                messages.append(rng.choice([*JUNK, "null", "[]", "{}", '{"type": "control"}']))
        return Case("ws", "messages", ws=messages)


@dataclass
class Report:
    """What the service answered."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx: the case and the answer
    ws_replies: Counter[str] = field(default_factory=Counter)
    health_failures: int = 0
    max_peers: int = 0
    rss_mb: list[float] = field(default_factory=list)


async def run(
    server: Server,
    cases: int,
    seed: int,
    *,
    headers: dict[str, str] | None = None,
    every: int = 100,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Send `cases` cases to `server`; every `every` cases check /healthz and sample memory."""
    fuzzer = Fuzzer(seed, await base_offer())
    report = Report()
    process = psutil.Process()
    url = f"http://127.0.0.1:{server.port}/"
    async with aiohttp.ClientSession(headers=headers or {}) as http:
        for n in range(cases):
            case = fuzzer.case()
            report.cases += 1
            report.labels[f"{case.route}:{case.label}"] += 1
            if case.route == "ws":
                await _websocket(http, url, case, report)
            else:
                path = "offer" if case.route == "offer" else "api/control"
                kwargs: dict[str, Any] = {"json": case.json} if case.data is None else {"data": case.data}
                if case.data is not None:
                    kwargs["headers"] = {"Content-Type": "application/json"}
                async with http.post(url + path, **kwargs) as r:
                    text = await r.text()
                    report.statuses[r.status] += 1
                    if r.status >= 500:
                        report.server_errors.append(f"{case.route}:{case.label} -> {r.status} {text[:300]}")
            report.max_peers = max(report.max_peers, len(server.service.peers))
            if n % every == every - 1:
                async with http.get(url + "healthz") as r:
                    report.health_failures += r.status != 200
                report.rss_mb.append(process.memory_info().rss / 2**20)
                if progress is not None:
                    progress(report)
    return report


async def _websocket(http: aiohttp.ClientSession, url: str, case: Case, report: Report) -> None:
    async with http.ws_connect(url + "ws") as ws:
        first = await asyncio.wait_for(ws.receive(), 10)
        report.ws_replies["snapshot" if '"snapshot"' in str(first.data) else "other-first"] += 1
        for message in case.ws:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
                continue  # ignored by the service: no reply
            await ws.send_str(message)
            reply = await _next_reply(ws)
            report.ws_replies[reply] += 1
            if reply.startswith("closed"):  # over the message size limit
                break
        report.statuses[101] += 1


async def _next_reply(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The type of the next message that is not a snapshot ("closed" when the server closed)."""
    while True:
        message = await asyncio.wait_for(ws.receive(), 10)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return f"closed {ws.close_code}"
        if message.type is not aiohttp.WSMsgType.TEXT:
            return str(message.type)
        kind = str(json.loads(message.data).get("type"))
        if kind != "snapshot":
            return kind
