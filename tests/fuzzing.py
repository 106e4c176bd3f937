"""A seeded fuzzer of the live service's inputs: `POST /offer`, `POST /api/control`, `/ws`,
request headers, and messages on a WebRTC data channel.

Cases are drawn from one `random.Random(seed)`: real aiortc offers (one video section, or
several video and audio sections) truncated, with lines dropped, repeated or shuffled,
duplicated m-sections, mangled numbers, odd bytes and huge attributes; JSON bodies of the wrong
types, nested deeply, huge or not JSON at all; binary and oversized websocket messages;
requests whose Authorization, Cookie, Host or Origin header carries bytes that are not UTF-8 or
odd values (sent byte for byte); and data-channel messages (nested deeply, binary, huge, of the
wrong types) over a real aiortc peer connected to the service. `run` sends them to a running
`Server` and reports what came back. Used by `tests/test_fuzz.py` (CI) and
`benchmarks/bench_fuzz.py` (long runs).
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
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from streamer.serve.http import Server

JUNK = ["", " ", "\x00", "\ufffd", "é", "\r\n", "a" * 300, "-1", "99999999999999999999", "NaN", "{", "💥", "\\", "%s"]
VALUES: list[Any] = [None, True, 0, -1, 2**64, 1.5, float("inf"), "", "x" * 5000, [], [1, [2]], {}, {"a": {}}, "pause"]


# Offers with several video and audio sections: (kind, direction) per transceiver, data channel.
SHAPES: dict[str, tuple[list[tuple[str, str]], bool]] = {
    "video": ([("video", "recvonly")], True),
    "3-video": ([("video", "recvonly"), ("video", "sendrecv"), ("video", "recvonly")], True),
    "video-2-audio": ([("video", "recvonly"), ("audio", "sendrecv"), ("audio", "recvonly")], False),
    "audio-first": ([("audio", "recvonly"), ("video", "recvonly"), ("video", "sendonly")], True),
}


async def base_offer(transceivers: list[tuple[str, str]] | None = None, channel: bool = True) -> str:
    """A real offer (by default video recvonly plus a data channel) from a peer that is then closed."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind, direction in transceivers or [("video", "recvonly")]:
        pc.addTransceiver(kind, direction=direction)
    if channel:
        pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def base_offers() -> dict[str, str]:
    """One real offer per shape in SHAPES."""
    return {name: await base_offer(*shape) for name, shape in SHAPES.items()}


async def raw_request(port: int, path: bytes, headers: list[bytes], *, method: bytes = b"GET") -> int:
    """Send one HTTP/1.1 request with these header lines, byte for byte (aiohttp's client will
    not send bytes that are not UTF-8), and return the answer's status (0: no answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [method + b" " + path + b" HTTP/1.1", *headers, b"Content-Length: 0", b"Connection: close"]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    words = status_line.split()
    return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0


@dataclass(frozen=True)
class Case:
    """One request: `route` ("offer", "control", "ws", "headers" or "channel"), what it
    carries, and a label. `ws` holds the websocket or data-channel messages; `headers` the
    method, path and header lines of a raw request ("{host}" stands for the service's address)."""

    route: str
    label: str
    json: Any = None
    data: bytes | None = None
    ws: list[str | bytes] = field(default_factory=list)
    headers: tuple[bytes, bytes, list[bytes]] | None = None


class Fuzzer:
    def __init__(self, seed: int, sdps: dict[str, str]) -> None:
        self.rng = random.Random(seed)
        self.shapes = {name: sdp.strip().split("\r\n") for name, sdp in sdps.items()}
        self.lines = self.shapes["video"]

    def case(self) -> Case:
        roll = self.rng.random()
        if roll < 0.45:
            return self.offer()
        if roll < 0.65:
            return self.control()
        if roll < 0.8:
            return self.websocket()
        if roll < 0.9:
            return self.header_case()
        return self.channel()

    # ---- SDP ---------------------------------------------------------------------------------------

    def sdp(self) -> tuple[str, str]:
        rng = self.rng
        shape = "video" if rng.random() < 0.7 else rng.choice(sorted(self.shapes))
        lines = list(self.shapes[shape])
        how, text = self._mangle(lines)
        return (how if shape == "video" else f"{shape}-{how}"), text

    def _mangle(self, lines: list[str]) -> tuple[str, str]:
        rng = self.rng
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
        if roll < 0.1:  # a well-formed offer with several video and audio sections
            shape = rng.choice([name for name in sorted(self.shapes) if name != "video"])
            return Case(
                "offer", f"multi-{shape}", json={"sdp": "\r\n".join(self.shapes[shape]) + "\r\n", "type": "offer"}
            )
        if roll < 0.6:
            how, sdp = self.sdp()
            body: dict[str, Any] = {"sdp": sdp, "type": "offer"}
            if rng.random() < 0.3:
                body["options"] = rng.choice(
                    [
                        {"codec": rng.choice([*VALUES, "vp8", "h264"])},
                        {"background": rng.choice(VALUES)},
                        {"stamp": rng.choice(VALUES)},
                        {"replaces": rng.choice([*VALUES, *JUNK])},
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

    # ---- headers ------------------------------------------------------------------------------------

    def header_case(self) -> Case:
        """A request whose credentials, cookies, Host or Origin are odd or not UTF-8."""
        rng = self.rng
        method, path = rng.choice(ROUTES)
        host = b"{host}" if rng.random() < 0.6 else rng.choice(HOSTS)  # mostly past the Host check
        headers = [] if rng.random() < 0.05 else [b"Host: " + host]
        if rng.random() < 0.1:
            headers.append(b"Host: " + rng.choice(HOSTS))  # twice
        for name, values in (("Authorization", AUTHORIZATIONS), ("Cookie", COOKIES), ("Origin", ORIGINS)):
            if rng.random() < 0.6:
                headers.append(name.encode() + b": " + self._odd(rng.choice(values)))
        rng.shuffle(headers)
        label = "+".join(sorted({h.split(b":")[0].decode().lower() for h in headers})) or "none"
        return Case("headers", label, headers=(method, path, headers))

    def _odd(self, value: bytes) -> bytes:
        """`value`, or with bytes that are not UTF-8 (nor CR or LF) put in."""
        rng = self.rng
        if rng.random() < 0.5:
            return value
        out = bytearray(value)
        for _ in range(rng.randint(1, 4)):
            out.insert(rng.randint(0, len(out)), rng.choice([0x80, 0xC3, 0xE9, 0xFE, 0xFF, rng.randrange(0x80, 0x100)]))
        return bytes(out)

    # ---- data channel -------------------------------------------------------------------------------

    def channel(self) -> Case:
        """Messages for a data channel: nested deeply, binary, huge, of the wrong types, junk."""
        rng = self.rng
        messages: list[str | bytes] = []
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.35:
                message: Any = {"type": rng.choice(["control", "glass", *VALUES])}
                for key, values in (
                    ("action", [*VALUES, "pause", "resume", "avatar"]),
                    ("ms", VALUES),
                    ("value", VALUES),
                ):
                    if rng.random() < 0.5:
                        message[key] = rng.choice(values)
                messages.append(json.dumps(message if rng.random() < 0.9 else rng.choice(VALUES)))
            elif roll < 0.55:
                depth = rng.choice([100, 1000, 30_000])
                messages.append(
                    rng.choice(["[" * depth + "]" * depth, '{"a":' * (depth // 3) + "1" + "}" * (depth // 3)])
                )
            elif roll < 0.75:
                messages.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2000))))
            elif roll < 0.85:
                messages.append(rng.choice(["x" * rng.choice([70_000, 200_000]), b"\xff" * 100_000]))
            else:
                messages.append(rng.choice([*JUNK, "null", "[]", "{}", '{"type": "control"}', '{"type": "glass"}']))
        return Case("channel", "messages", ws=messages)


ROUTES = [
    (b"GET", b"/api/info"),
    (b"GET", b"/healthz"),
    (b"GET", b"/"),
    (b"GET", b"/dashboard"),
    (b"GET", b"/metrics"),
    (b"GET", b"/ws"),
    (b"POST", b"/offer"),
    (b"POST", b"/api/control"),
]
HOSTS = [
    b"{host}",
    b"localhost",
    b"LOCALHOST",
    b"127.0.0.1\xff",
    b"\xff",
    b"",
    b"[::1",
    b"evil.example",
    b"a" * 300,
    b"127.0.0.1:99999",
    b"127.0.0.1 evil",
    b"xn--\xc3\xa9.example",
    b"[::1]:80",
]
AUTHORIZATIONS = [
    b"Bearer fuzz-operator",
    b"Bearer \xff",
    b"Bearer ",
    b"Bearer",
    b"bearer fuzz-operator",
    b"Basic \xff\xfe",
    b"Bearer " + b"a" * 5000,
    b"Bearer fuzz-operator\x00",
    b"Bearer \xc3\xa9",
]
COOKIES = [
    b"avatarcam_token=\xff",
    b"avatarcam_operator=fuzz-operator",
    b"avatarcam_operator=\xfe; avatarcam_token=\x80",
    b"=",
    b";;;",
    b'avatarcam_token="\\xff"',
    b"a=" + b"b" * 5000,
    b"; ".join(b"c%d=v" % i for i in range(200)),
    b"avatarcam_operator=fuzz\x00operator",
    b"avatarcam_token",
]
ORIGINS = [b"null", b"http://evil.example", b"http://{host}", b"\xff", b"http://[::1", b""]


@dataclass
class Report:
    """What the service answered."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # 5xx: the case and the answer
    ws_replies: Counter[str] = field(default_factory=Counter)
    channel_messages: int = 0  # sent on the data channel, each followed by a probe
    channel_failures: list[str] = field(default_factory=list)  # probes the service did not answer
    channel_connects: int = 0
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
    fuzzer = Fuzzer(seed, await base_offers())
    report = Report()
    process = psutil.Process()
    url = f"http://127.0.0.1:{server.port}/"
    channel = ChannelPeer(url, headers or {})
    async with aiohttp.ClientSession(headers=headers or {}) as http:
        try:
            for n in range(cases):
                case = fuzzer.case()
                report.cases += 1
                report.labels[f"{case.route}:{case.label}"] += 1
                await _send(http, url, server.port, channel, case, report)
                report.max_peers = max(report.max_peers, len(server.service.peers))
                if n % every == every - 1:
                    async with http.get(url + "healthz") as r:
                        report.health_failures += r.status != 200
                    report.rss_mb.append(process.memory_info().rss / 2**20)
                    if progress is not None:
                        progress(report)
        finally:
            await channel.close()
    return report


async def _send(
    http: aiohttp.ClientSession, url: str, port: int, channel: ChannelPeer, case: Case, report: Report
) -> None:
    if case.route == "ws":
        await _websocket(http, url, case, report)
    elif case.route == "channel":
        await channel.send(case, report)
    elif case.route == "headers":
        assert case.headers is not None
        method, path, lines = case.headers
        host = f"127.0.0.1:{port}".encode()
        status = await raw_request(port, path, [line.replace(b"{host}", host) for line in lines], method=method)
        report.statuses[status] += 1
        if status >= 500 or status == 0:
            report.server_errors.append(f"headers:{case.label} {lines!r:.300} -> {status}")
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


class ChannelPeer:
    """An aiortc peer connected to the service (it receives the avatar into a blackhole) whose
    data channel carries the fuzzed messages. After each message a probe (an unknown avatar
    with a numbered name) must come back refused, naming that number: the service still reads
    the channel. Connected on first use, and again should the service close it."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.pc: RTCPeerConnection | None = None
        self.channel: Any = None
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.blackhole = MediaBlackhole()
        self.probes = 0

    async def connect(self, report: Report) -> None:
        await self.close()
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        opened = asyncio.Event()
        self.channel = pc.createDataChannel("fuzz")
        self.channel.on("open", opened.set)
        self.channel.on("message", self.replies.put_nowait)
        pc.on("track", self.blackhole.addTrack)
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with aiohttp.ClientSession(headers=self.headers) as http, http.post(self.url + "offer", json=body) as r:
            answer = await r.json()
            assert r.status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await self.blackhole.start()
        await asyncio.wait_for(opened.wait(), 60)
        report.channel_connects += 1

    async def send(self, case: Case, report: Report) -> None:
        for message in case.ws:
            if self.channel is None or self.channel.readyState != "open":
                await self.connect(report)
            self.channel.send(message)
            report.channel_messages += 1
            self.probes += 1
            probe = f"probe-{self.probes}"
            self.channel.send(json.dumps({"type": "control", "action": "avatar", "value": probe}))
            try:
                await asyncio.wait_for(self._reply_naming(probe), 30)
            except TimeoutError:
                report.channel_failures.append(f"no answer to {probe} after {message[:60]!r}")

    async def _reply_naming(self, probe: str) -> None:
        while f"'{probe}'" not in await self.replies.get():
            pass

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
            await self.blackhole.stop()
            self.blackhole = MediaBlackhole()
            self.pc = self.channel = None


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
