"""The room's participants that avatarcam ships, against a real gateway (tests/cluster_env.py:
a local Ray cluster, a real Janus on the namespace's veth pair, the gateway on its own loop):

- `avatarcam connect` on a room link (streamer/connect/room.py): a driver publishes a shared
  clip as its camera and gets the avatar back with its own frame ids (glass-to-glass); a viewer
  only subscribes;
- the page in room mode (web/janus.js), in headless Chromium: marker `browser` too.

    unshare -n sh -c 'ip link set lo up && PYTHONPATH=$PWD .venv/bin/pytest -q -m cluster tests/test_room_clients.py'
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.connect.client import Client
from streamer.connect.config import ConnectConfig, ConnectError
from streamer.connect.room import room_link
from streamer.sinks.base import SinkSpec
from tests.browser import browsers, fake_camera, require_chromium
from tests.cluster_env import GatewayThread, _create, _node, _until
from tests.media import shared_video
from tests.netns import needs_private_network

WAIT = 180.0  # seconds a condition may take on a loaded 2-core machine before the test fails
CLIP = "drv_lp_d9_512.mp4"


def test_room_links_are_told_from_serve_urls_and_bad_ones_are_refused() -> None:
    assert room_link("http://127.0.0.1:8080/?token=T") is None
    ref = room_link("http://gw:8090/?room=12&role=driver&room_token=abc")
    assert ref is not None and (ref.base, ref.room, ref.role, ref.token) == ("http://gw:8090", 12, "driver", "abc")
    assert ref.publishes and not room_link("http://gw/?room=1&role=viewer&room_token=x").publishes  # type: ignore[union-attr]
    for bad, words in (
        ("http://gw/?room=x&role=driver&room_token=t", "room must be one number"),
        ("http://gw/?room=1&role=operator&room_token=t", "role must be driver or viewer"),
        ("http://gw/?room=1&role=viewer", "has no room_token"),
    ):
        with pytest.raises(ConnectError, match=words):
            room_link(bad)


def _config(link: str, **given: Any) -> ConnectConfig:
    return ConnectConfig(
        link, video=shared_video(CLIP), camera=None, loop=True, sinks=(SinkSpec("null"),), report_every=0, **given
    )


async def _run_until(client: Client, done: Any, what: str) -> dict[str, Any]:
    """Start the client, run its loop until `done(client)`, shut it down: its final report."""
    await client.startup()
    loop_task = asyncio.get_running_loop().create_task(client.main_loop())
    deadline = time.monotonic() + WAIT
    try:
        while not done(client):
            if loop_task.done():
                loop_task.result()  # its error, if it failed
                raise AssertionError(f"the client stopped before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {WAIT:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        client.should_exit.set()
        await asyncio.gather(loop_task, return_exceptions=True)
        report = await client.shutdown()
    return report


@needs_private_network
@pytest.mark.cluster
def test_connect_on_a_room_link_drives_the_avatar_and_measures_glass_to_glass(gateway: GatewayThread) -> None:
    created = _create(gateway)
    links = created["links"]
    try:

        async def run() -> tuple[dict[str, Any], dict[str, Any]]:
            driver = Client(_config(links["driver"], stall_seconds=30.0))
            viewer = Client(_config(links["viewer"], stall_seconds=30.0))
            # the driver runs until 20 of its own frame ids came back on avatar frames; the viewer meanwhile
            driving = asyncio.ensure_future(_run_until(driver, lambda c: c.stats.echoed >= 20, "20 echoed ids"))
            watching = await _run_until(viewer, lambda c: c.stats.frames_received >= 20, "20 frames at the viewer")
            return await driving, watching

        driven, watched = asyncio.run(run())
    finally:
        assert gateway.call("DELETE", f"/api/rooms/{created['room']}")[0] == 200
    print(f"connect through a room: glass-to-glass {driven['glass_ms']}, fps {driven['fps']}")
    assert driven["room"] == {"room": created["room"], "role": "driver"}
    assert driven["frames_sent"] > 0 and driven["frames_received"] > 0
    glass = driven["glass_ms"]
    assert glass is not None and glass["samples"] >= 20 and 0 < glass["p50"] <= glass["p99"]
    assert watched["room"]["role"] == "viewer"
    assert watched["source"] is None and watched["frames_sent"] == 0 and watched["frames_received"] >= 20


@needs_private_network
@pytest.mark.cluster
def test_connect_with_a_wrong_room_token_says_so(gateway: GatewayThread) -> None:
    created = _create(gateway)
    try:
        bad = created["links"]["driver"].rsplit("room_token=", 1)[0] + "room_token=wrong"

        async def run() -> None:
            client = Client(_config(bad))
            try:
                await client.startup()
            finally:
                await client.shutdown()

        with pytest.raises(ConnectError, match=f"refused to let us join room {created['room']} as driver: wrong token"):
            asyncio.run(run())
    finally:
        assert gateway.call("DELETE", f"/api/rooms/{created['room']}")[0] == 200


def _frames_shown(browser: Any) -> int:
    return int(browser.js("return window.avatarcam.framesShown"))


@needs_private_network
@pytest.mark.cluster
@pytest.mark.browser
def test_page_on_room_links_drives_and_shows_the_avatar_with_glass_to_glass(
    gateway: GatewayThread, tmp_path: Path
) -> None:
    require_chromium()
    camera = fake_camera(shared_video(CLIP), tmp_path / "camera.y4m")
    created = _create(gateway)
    links = created["links"]
    try:
        with browsers() as make:
            driver = make(camera)
            driver.open(links["driver"])
            driver.wait_state({"running", "no-face"}, timeout=WAIT)
            glass = driver.wait_value("stat-glass", timeout=WAIT)  # its own frame ids came back
            fps = driver.wait_value("stat-fps", timeout=WAIT)
            shown = _frames_shown(driver)
            # a viewer without a camera (tests/browser.py turns Chromium's mDNS names off)
            viewer = make(None)
            viewer.open(links["viewer"])
            viewer.wait_state({"running", "no-face"}, timeout=WAIT)
            viewer_fps = viewer.wait_value("stat-fps", timeout=WAIT)
            size = viewer.js("const v = document.getElementById('avatar'); return [v.videoWidth, v.videoHeight]")
            print(
                f"page through a room: driver glass-to-glass {glass:.0f} ms (median), {fps:.1f} fps; "
                f"viewer {viewer_fps:.1f} fps, {size}"
            )
            assert shown > 0 and _frames_shown(viewer) > 0
            assert driver.text("stat-glass").endswith("ms") and viewer.text("stat-glass") == "n/a"
            assert size == [256, 256]  # the avatar (the demo's 256 px), not the driver's camera
            assert driver.text("mode").startswith(f"room {created['room']}: your camera drives")

            def reported() -> Any:  # the driver's page reports its glass-to-glass to the fleet view
                (row,) = [s for s in gateway.call("GET", "/api/fleet")[2]["sessions"] if s["room"] == created["room"]]
                return row["glass_ms"].get("p50")

            fleet_glass = _until(reported, "the driver's glass-to-glass in the fleet view")
            assert 0 < fleet_glass < 60_000
    finally:
        assert gateway.call("DELETE", f"/api/rooms/{created['room']}")[0] == 200


@needs_private_network
@pytest.mark.cluster
@pytest.mark.browser
def test_page_follows_the_avatar_to_its_restarted_session_without_rejoining(
    cluster: Any, gateway: GatewayThread
) -> None:
    require_chromium()
    created = _create(gateway)
    (victim,) = [n for n in cluster.worker_nodes if n.node_id == created["node"]]
    try:
        with browsers() as make:
            # no driver: the session shows its idle pose, which is what the viewer follows
            viewer = make(None)
            viewer.open(created["links"]["viewer"])
            viewer.wait_state({"running", "no-face"}, timeout=WAIT)
            pc_before = viewer.js("return window.avatarcam.pc !== null && (window.avatarcam.pc.__mark = 1)")
            killed = time.monotonic()
            cluster.remove_node(victim)
            switches = viewer.js("return window.avatarcam.subscriber?.switches ?? 0")
            deadline = time.monotonic() + WAIT
            while switches < 1:
                assert time.monotonic() < deadline, f"no switch within {WAIT:.0f} s\n{viewer.console()}"
                time.sleep(0.5)
                switches = viewer.js("return window.avatarcam.subscriber?.switches ?? 0")
            shown = _frames_shown(viewer)
            while _frames_shown(viewer) < shown + 20:  # the restarted session's frames, on the same page
                assert time.monotonic() < deadline, f"no frames after the switch\n{viewer.console()}"
                time.sleep(0.2)
            print(f"page failover: {time.monotonic() - killed:.1f} s from the node kill to 20 frames after the switch")
            # the same peer connection (no re-join): the mark set on it before the kill is still there
            assert pc_before == 1 and viewer.js("return window.avatarcam.pc.__mark") == 1
    finally:
        _node(cluster)
        assert gateway.call("DELETE", f"/api/rooms/{created['room']}")[0] == 200


def test_the_gateways_janus_pass_through_passes_only_a_participants_requests() -> None:
    pytest.importorskip("ray")
    from tests.cluster_env import _janus_less_gateway

    gateway = _janus_less_gateway()
    try:
        create_room = {"janus": "message", "body": {"request": "create", "room": 1}}
        for body, words in (
            ({"janus": "message", "body": {"request": "destroy", "room": 1}}, "VideoRoom request not passed"),
            (create_room, "VideoRoom request not passed"),
            ({"janus": "attach", "plugin": "janus.plugin.streaming"}, "only the VideoRoom plugin"),
            ({"janus": "info"}, "Janus request not passed"),
        ):
            status, _, answer = gateway.call("POST", "/janus/1/2", body, token=None)
            assert status == 403 and words in answer["error"], answer
        assert gateway.call("POST", "/janus/x", {"janus": "create"}, token=None)[0] == 404
        status, _, answer = gateway.call("POST", "/janus", {"janus": "create"}, token=None)
        assert status == 503 and "Janus at http://127.0.0.1:9/janus is not reachable" in answer["error"]
    finally:
        gateway.close()


def test_room_links_open_the_page_where_the_gateway_needs_a_page_token() -> None:
    pytest.importorskip("ray")
    import http.cookiejar
    import urllib.error
    import urllib.request

    from streamer.serve.rooms import RoomRecord
    from tests.cluster_env import _janus_less_gateway

    def status(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    secret, pin, tokens = RoomRecord.new_secrets()
    record = RoomRecord(7, "cap12", "room-7", secret, pin, tokens)
    for token in (None, "page-token"):
        gateway = _janus_less_gateway(token=token)
        try:
            links = gateway.gateway._links(record)
            for link in links.values():
                assert status(link) == 200, link
                assert ("token=page-token" in link) == (token is not None)
            if token is not None:  # the room token alone opens no page there
                assert status(links["viewer"].replace("&token=page-token", "")) == 401
                # the page's own files come with the cookie the link's token earned, under the gateway's name
                jar = http.cookiejar.CookieJar()
                browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
                browser.open(links["viewer"], timeout=30).close()
                assert [c.name for c in jar] == ["avatarcam_token_gateway"]
                with browser.open(gateway.gateway.origin + "/static/app.js", timeout=30) as response:
                    assert response.status == 200
        finally:
            gateway.close()


def test_only_a_rooms_driver_reports_glass_to_glass_and_only_a_plausible_figure() -> None:
    pytest.importorskip("ray")
    from streamer.serve.rooms import Participant, RoomRecord
    from tests.cluster_env import _janus_less_gateway

    gateway = _janus_less_gateway()
    secret, pin, tokens = RoomRecord.new_secrets()
    record = RoomRecord(7, "cap12", "room-7", secret, pin, tokens)
    gateway.gateway.rooms[7] = record
    try:
        driver, viewer = tokens[Participant.DRIVER], tokens[Participant.VIEWER]
        report = "/api/rooms/7/report"
        assert gateway.call("POST", report, {"token": viewer, "glass_ms": 80}, token=None)[0] == 403
        for bad in (0, -5, 90_000, "80", True, None):
            assert gateway.call("POST", report, {"token": driver, "glass_ms": bad}, token=None)[0] == 400, bad
        assert gateway.call("POST", "/api/rooms/8/report", {"token": driver, "glass_ms": 80}, token=None)[0] == 404
        assert list(record.glass) == []
        status, _, answer = gateway.call("POST", report, {"token": driver, "glass_ms": 80.5}, token=None)
        assert status == 200 and answer == {"reports": 1} and list(record.glass) == [0.0805]
    finally:
        gateway.close()
