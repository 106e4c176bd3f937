"""The /create page's API: uploads, jobs, consent, samples and the recording coach.

Every route here is operator-only (`is_create_route`, used by http.py's guard). Jobs run in
`streamer.create.runner.Runner`, started with the app and stopped with it (a running stage is
left to resume on the next start); a finished avatar is loaded into the running `Service`, so it
appears in /api/info's "avatars" and the existing control action (`avatar NAME`) switches to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from aiohttp import web

from streamer.core.rtc import ice_configuration
from streamer.create.coach import Coach
from streamer.create.jobs import MAX_SECONDS, JobError, JobStore, create_root, suggestion
from streamer.create.preview import CoachOfferError, coach_answer
from streamer.create.runner import PLANS, Runner
from streamer.create.upload import MAX_CHUNK, MAX_UPLOAD, UploadError, Uploads, check_video
from streamer.pipeline.session import AvatarEntry
from streamer.serve.config import ServeConfig
from streamer.serve.guard import page, read_json
from streamer.serve.ice import screen_candidates
from streamer.serve.service import RequestError, Service, check_media_sections

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = 5  # tiles per row of train's sample grid (`Trainer.sample_grid`)
SUFFIXES = {"video/webm": ".webm", "video/mp4": ".mp4", "video/quicktime": ".mov", "video/x-matroska": ".mkv"}


def is_create_route(path: str) -> bool:
    """The page and its API: operator-only, like the dashboard."""
    return path == "/create" or path.startswith(("/create/", "/api/create/"))


def _refused(exc: UploadError | JobError) -> web.Response:
    body: dict[str, Any] = {"error": str(exc)}
    if isinstance(exc, UploadError) and exc.received is not None:
        body["received"] = exc.received
    log.info("create: %d %s", exc.status, exc)
    return web.json_response(body, status=exc.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answers(handler: Handler) -> Handler:
    """Upload and job refusals as JSON errors ({"error"}, and "received" where the page resumes)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (UploadError, JobError) as exc:
            return _refused(exc)

    return wrapped


class CreateRoutes:
    """The routes' state: the uploads folder, the job runner, the coach's open peers."""

    def __init__(self, service: Service, config: ServeConfig, root: Path) -> None:
        self.service = service
        self.config = config
        self.uploads = Uploads(root / "uploads", MAX_UPLOAD)
        self.cuda = torch.cuda.is_available()
        cpu_service = not config.device.startswith("cuda")
        self.runner = Runner(JobStore(root), root / "avatars", self.publish, student=cpu_service)
        self._coaches: set[Callable[[], Awaitable[None]]] = set()

    async def publish(self, path: Path) -> str:
        """Load a finished avatar into the live service; its name in the service's list."""
        entry = await asyncio.to_thread(
            AvatarEntry.load, path, badge_required=self.config.badge_required, device=self.config.device
        )
        self.service.avatars[entry.name] = entry
        log.info("avatar %s is live: %s (%d px)", entry.name, entry.avatar.identity.subject, entry.resolution)
        return entry.name

    async def startup(self, app: web.Application) -> None:
        await self.runner.start()

    async def shutdown(self, app: web.Application) -> None:
        for close in list(self._coaches):
            with contextlib.suppress(Exception):
                await close()
        self._coaches.clear()
        await self.runner.stop()

    # ---- info and uploads ----------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        preset, minutes = suggestion(self.cuda)
        return web.json_response(
            {
                "suggested_minutes": round(minutes),
                "presets": list(PLANS),
                "preset": preset,
                "max_upload_bytes": self.uploads.max_bytes,
                "max_seconds": MAX_SECONDS,
                "avatars": sorted(self.service.avatars),
            }
        )

    async def new_upload(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError(400, 'send {"bytes": the recording\'s size, "type": its MIME type}')
        upload = await asyncio.to_thread(self.uploads.create, body.get("bytes"), body.get("type", ""))
        return web.json_response({"upload": upload, "received": 0})

    async def put_chunk(self, request: web.Request) -> web.Response:
        upload = request.match_info["upload"]
        try:
            offset = int(request.query["offset"])
        except (KeyError, ValueError):
            raise RequestError(400, "give the chunk's position: PUT ...?offset=BYTES_ALREADY_SENT") from None
        if request.content_length is not None and request.content_length > MAX_CHUNK:
            raise RequestError(413, f"a chunk is at most {MAX_CHUNK} bytes; send smaller pieces")
        data = bytearray()
        async for piece in request.content.iter_chunked(256 * 1024):
            data += piece
            if len(data) > MAX_CHUNK:
                raise RequestError(413, f"a chunk is at most {MAX_CHUNK} bytes; send smaller pieces")
        received = await self.uploads.put(upload, offset, bytes(data))
        return web.json_response({"received": received})

    async def get_upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["upload"]
        declared = await asyncio.to_thread(self.uploads.declared, upload)
        received = await asyncio.to_thread(self.uploads.received, upload)
        return web.json_response({"received": received, "bytes": declared.bytes})

    # ---- jobs ----------------------------------------------------------------------------------

    async def new_job(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("upload"), str):
            raise RequestError(400, 'send {"upload": id, "minutes": N, "preset"?: name, "keep_video"?: bool}')
        preset, minutes = suggestion(self.cuda)
        preset = body.get("preset", preset)
        if not isinstance(preset, str):
            raise RequestError(400, f"preset must be one of {list(PLANS)}")
        upload = body["upload"]
        path, declared = await asyncio.to_thread(self.uploads.complete, upload)
        try:
            await asyncio.to_thread(check_video, path)
        except UploadError:
            await asyncio.to_thread(self.uploads.remove, upload)  # nothing to keep of a file that is no video
            raise
        kind = declared.type.split(";")[0].strip().lower()
        suffix = SUFFIXES.get(kind) or mimetypes.guess_extension(kind) or ".video"
        keep = body.get("keep_video", False) is True
        job = self.runner.submit(path, suffix, body.get("minutes", minutes), preset, keep)  # on the loop: it wakes it
        await asyncio.to_thread(self.uploads.remove, upload)
        return web.json_response(self.runner.view(job))

    async def jobs(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": self.runner.views()})

    async def job(self, request: web.Request) -> web.Response:
        return web.json_response(self.runner.view(self.runner.get(request.match_info["job"])))

    async def cancel(self, request: web.Request) -> web.Response:
        job = await self.runner.cancel(request.match_info["job"])
        return web.json_response(self.runner.view(job))

    async def consent(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise RequestError(400, 'send {"subject": name, "consent": statement, "agree": true}')
        job = await asyncio.to_thread(
            self.runner.give_consent,
            request.match_info["job"],
            body.get("subject"),
            body.get("consent"),
            body.get("agree"),
        )
        return web.json_response(self.runner.view(job))

    async def sample(self, request: web.Request) -> web.Response:
        grid = self.runner.sample(request.match_info["job"])
        jpeg = await asyncio.to_thread(_jpeg, grid) if grid is not None else None
        if jpeg is None:
            raise RequestError(404, "no training sample yet; one comes with the first checkpoints")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    # ---- the coach -----------------------------------------------------------------------------

    async def coach(self, request: web.Request) -> web.Response:
        """The page's low-rate preview, answered by the recording coach on its "coach" channel.
        An optional "height" (the recording's, in pixels) lets it say "move closer"."""
        body = await read_json(request)
        if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            raise RequestError(400, 'expected JSON {"sdp": "...", "type": "offer", "height"?: pixels}')
        height = body.get("height")
        if height is not None and (isinstance(height, bool) or not isinstance(height, int) or height <= 0):
            raise RequestError(400, "height must be the recording's height in pixels")
        check_media_sections(body["sdp"])
        try:
            sdp, _ = screen_candidates(body["sdp"])
            ice = ice_configuration(self.config.ice_servers, self.config.ice_username, self.config.ice_credential)
            held: list[Callable[[], Awaitable[None]]] = []  # this peer's close, once known
            answer, close = await coach_answer(
                {"sdp": sdp, "type": "offer"},
                lambda: Coach(recording_height=height),
                ice=ice,
                on_closed=lambda: self._coaches.difference_update(held),
            )
        except (CoachOfferError, ValueError) as exc:
            raise RequestError(400, f"cannot coach with this offer: {exc}") from None
        held.append(close)
        self._coaches.add(close)
        return web.json_response(answer)


def _jpeg(path: Path) -> bytes | None:
    """The sample strip of train's newest grid, as JPEG: its real frames in a row above the
    avatar's (the grid's rows are frames, its columns real | generated | mask | renders)."""
    grid = cv2.imread(str(path))
    if grid is None or grid.shape[1] % SAMPLE_COLUMNS:
        return None
    tile = grid.shape[1] // SAMPLE_COLUMNS
    frames = [grid[i : i + tile] for i in range(0, grid.shape[0] - tile + 1, tile)]
    strip = np.vstack([np.hstack([f[:, :tile] for f in frames]), np.hstack([f[:, tile : 2 * tile] for f in frames])])
    ok, data = cv2.imencode(".jpg", strip, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return data.tobytes() if ok else None


def add_create_routes(app: web.Application, service: Service, config: ServeConfig) -> CreateRoutes:
    """Register /create and /api/create/* on `app`; the job runner starts and stops with it. Its
    folder is config.create_dir (default `<cache>/create`): `uploads/`, one folder per job, and
    the finished avatars in `avatars/NAME.avatar`."""
    routes = CreateRoutes(service, config, config.create_dir or create_root())
    app.add_routes(
        [
            web.get("/create", page(config.web_root, "create.html")),
            web.get("/api/create/info", routes.info),
            web.post("/api/create/uploads", _answers(routes.new_upload)),
            web.put("/api/create/uploads/{upload}", _answers(routes.put_chunk)),
            web.get("/api/create/uploads/{upload}", _answers(routes.get_upload)),
            web.post("/api/create/jobs", _answers(routes.new_job)),
            web.get("/api/create/jobs", routes.jobs),
            web.get("/api/create/jobs/{job}", _answers(routes.job)),
            web.post("/api/create/jobs/{job}/cancel", _answers(routes.cancel)),
            web.post("/api/create/jobs/{job}/consent", _answers(routes.consent)),
            web.get("/api/create/jobs/{job}/sample.jpg", _answers(routes.sample)),
            web.post("/api/create/coach", routes.coach),
        ]
    )
    app.on_startup.append(routes.startup)
    app.on_shutdown.append(routes.shutdown)
    return routes
