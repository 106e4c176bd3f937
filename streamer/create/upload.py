"""Resumable chunked uploads of a recording, and the check that it is a video.

An upload is `<root>/<id>.part` (the bytes so far) and `<id>.json` (what the page declared),
both owner-only under an owner-only folder. The file's size is the truth about what arrived, so
an upload survives a dropped connection and a server restart alike: the page asks how much
arrived (or gets told by a 409) and sends the rest from there. Nothing here is ever served back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from streamer.core.files import write_atomic

MAX_CHUNK = 8 * 2**20  # bytes of one PUT
MAX_UPLOAD = 2 * 2**30  # bytes of one recording: three minutes of 1080p at a generous 40 Mbit/s is 0.9 GB
DISK_RESERVE = 2 * 2**30  # bytes left free besides the video: prepare writes frames, train checkpoints
STALE_SECONDS = 24 * 3600  # an upload nobody touched for this long is deleted
UPLOAD_ID = re.compile(r"[0-9a-f]{16}")


class UploadError(Exception):
    """A request about an upload that is refused; `status` is the HTTP status, the message says
    what to do, `received` (when set) is where the page should resume."""

    def __init__(self, status: int, message: str, received: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.received = received


class NotAVideo(UploadError):
    def __init__(self, detail: str) -> None:
        super().__init__(415, f"that file is not a video ({detail}); record again, or upload an mp4 or webm")


def private_dir(path: Path) -> Path:
    """`path` created owner-only (0700), parents included; an existing one is made owner-only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (the tests patch this to fake a full disk)."""
    return shutil.disk_usage(path).free


def disk_full(needed: int) -> UploadError:
    gb = needed / 1e9
    return UploadError(
        507, f"the server's disk is too full for this recording (needs {gb:.1f} GB free); free space and retry"
    )


@dataclass(frozen=True)
class Declared:
    """What the page said it will send."""

    bytes: int
    type: str
    created: float


class Uploads:
    """The uploads folder. All methods may block on disk: call them from a worker thread
    (`UploadRoutes`-style callers use `asyncio.to_thread`), or use `put` which does."""

    def __init__(self, root: Path, max_bytes: int = MAX_UPLOAD, reserve: int = DISK_RESERVE) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.reserve = reserve
        self._locks: dict[str, asyncio.Lock] = {}

    def _paths(self, upload: str) -> tuple[Path, Path]:
        if not UPLOAD_ID.fullmatch(upload):
            raise UploadError(404, f"no upload {upload[:40]!r}; start a new one")
        return self.root / f"{upload}.part", self.root / f"{upload}.json"

    def create(self, expected: object, kind: object) -> str:
        """A new upload of `expected` bytes; 413 over the limit, 507 when the disk lacks room."""
        if not isinstance(expected, int) or isinstance(expected, bool) or expected <= 0:
            raise UploadError(400, 'send {"bytes": the recording\'s size in bytes (> 0), "type": its MIME type}')
        if not isinstance(kind, str) or len(kind) > 200:
            raise UploadError(400, "type must be the recording's MIME type, e.g. video/webm")
        if expected > self.max_bytes:
            limit = self.max_bytes / 1e6
            raise UploadError(413, f"the recording is over the {limit:.0f} MB limit; record a shorter or smaller video")
        private_dir(self.root)
        self.sweep()
        if free_bytes(self.root) < expected + self.reserve:
            raise disk_full(expected + self.reserve)
        upload = secrets.token_hex(8)
        part, meta = self._paths(upload)
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        write_atomic(meta, json.dumps(asdict(Declared(expected, kind, time.time()))).encode(), 0o600)
        return upload

    def declared(self, upload: str) -> Declared:
        meta = self._paths(upload)[1]
        try:
            return Declared(**json.loads(meta.read_text()))
        except (OSError, ValueError, TypeError):
            raise UploadError(404, f"no upload {upload!r}; start a new one") from None

    def received(self, upload: str) -> int:
        part, _ = self._paths(upload)
        self.declared(upload)
        return part.stat().st_size

    def _append(self, upload: str, offset: int, data: bytes) -> int:
        declared = self.declared(upload)
        part, _ = self._paths(upload)
        received = part.stat().st_size
        if offset != received:
            raise UploadError(409, f"the server has {received} bytes of this upload; send from there", received)
        if received + len(data) > declared.bytes:
            raise UploadError(400, f"more bytes than the {declared.bytes} declared; start a new upload")
        if free_bytes(self.root) < len(data) + self.reserve // 4:
            raise disk_full(len(data) + self.reserve // 4)
        try:
            with part.open("r+b") as f:
                f.seek(received)
                f.write(data)
        except OSError as exc:  # ENOSPC between the check and the write, or a quota
            os.truncate(part, received)
            raise disk_full(len(data)) if exc.errno == 28 else exc from None
        return received + len(data)

    async def put(self, upload: str, offset: int, data: bytes) -> int:
        """Append the chunk `data` at `offset` (must equal what has arrived: 409 otherwise, with
        `received`); returns the bytes received so far. One writer per upload at a time."""
        lock = self._locks.setdefault(upload, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self._append, upload, offset, data)

    def complete(self, upload: str) -> tuple[Path, Declared]:
        """The finished upload's file and declaration; 409 while bytes are missing."""
        declared = self.declared(upload)
        received = self.received(upload)
        if received != declared.bytes:
            raise UploadError(
                409, f"the upload has {received} of {declared.bytes} bytes; send the rest first", received
            )
        return self._paths(upload)[0], declared

    def remove(self, upload: str) -> None:
        for path in self._paths(upload):
            path.unlink(missing_ok=True)
        self._locks.pop(upload, None)

    def sweep(self) -> None:
        """Delete uploads nobody touched for STALE_SECONDS (an abandoned recording)."""
        now = time.time()
        for meta in self.root.glob("*.json"):
            part = meta.with_suffix(".part")
            touched = max(meta.stat().st_mtime, part.stat().st_mtime if part.exists() else 0)
            if now - touched > STALE_SECONDS:
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)


def check_video(path: Path) -> None:
    """Raise NotAVideo unless PyAV finds a video stream in `path` and decodes a frame of it."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise NotAVideo("it has no video stream")
            for _ in container.decode(video=0):
                return
    except av.FFmpegError as exc:
        raise NotAVideo(f"it cannot be decoded: {type(exc).__name__}") from None
    raise NotAVideo("no frame of it can be decoded")
