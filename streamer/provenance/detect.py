"""`avatarcam detect`: is this video or image an avatarcam avatar, and which one?

Reads the invisible watermark (`streamer.provenance.watermark`) from every frame, and the C2PA manifest
(`streamer.provenance.credentials`) from mp4 files, and says what each shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamer.provenance.watermark import (
    F32,
    MARKER,
    VideoReading,
    false_alarm_log10,
    identity_digest,
    luma,
    read_lumas,
)

IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
MP4 = {".mp4", ".m4v", ".mov"}


class DetectError(RuntimeError):
    """A file cannot be read; the message says why."""


def _video_lumas(path: Path) -> Iterator[F32]:
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise DetectError(f"{path}: not a readable video or image ({exc.strerror or exc})") from None
    with container:
        if not container.streams.video:
            raise DetectError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield np.asarray(frame.to_ndarray(format="gray"), np.float32)


def read_file(path: Path) -> VideoReading:
    """The watermark reading of an image or every frame of a video."""
    if not path.is_file():
        raise DetectError(f"{path}: no such file")
    if path.suffix.lower() in IMAGES:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DetectError(f"{path}: not a readable image")
        return read_lumas([luma(np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8))])
    return read_lumas(_video_lumas(path))


def file_found(reading: VideoReading) -> bool:
    """Whether `detect` calls a file marked: some frame's own reading, or all frames' folds summed."""
    return reading.found > 0 or (reading.combined is not None and reading.combined.found)


def avatar_digest(path: Path) -> int:
    """The watermark digest an avatar file's frames carry."""
    from models.avatar import read_header

    return identity_digest(json.loads(read_header(path)["identity"]))


def detect(path: Path, avatar: Path | None = None, anchors: bytes | None = None) -> dict[str, Any]:
    """Everything `avatarcam detect` reports about one file (a JSON-ready dict)."""
    reading = read_file(path)
    digest = reading.digest
    found = file_found(reading)
    log_fa = false_alarm_log10(reading)
    if reading.combined is not None and reading.combined.found:
        log_fa = min(log_fa, false_alarm_log10(VideoReading(1, 1, {}, None)))
    report: dict[str, Any] = {
        "file": str(path),
        "found": found,
        "frames": reading.frames,
        "frames_marked": reading.found,
        "fraction": round(reading.fraction, 4),
        "payload": {"marker": f"{MARKER:04x}", "digest": f"{digest:08x}"} if found and digest is not None else None,
        "other_payloads": sorted(f"{d:08x}" for d in reading.digests if d != digest),
        "combined_z": round(reading.combined.z, 2) if reading.combined is not None else None,
        "false_alarm_log10": round(log_fa, 1) if found else None,
        "confidence": (1.0 - 10.0**log_fa) if found else 0.0,
        "avatar": None,
        "credentials": None,
    }
    if avatar is not None:
        expected = avatar_digest(avatar)
        report["avatar"] = {"file": str(avatar), "digest": f"{expected:08x}", "match": found and digest == expected}
    if path.suffix.lower() in MP4:
        report["credentials"] = _credentials(path, anchors, digest if found else None)
    return report


def _credentials(path: Path, anchors: bytes | None, digest: int | None) -> dict[str, Any]:
    from streamer.provenance.credentials import CredentialsError, read_mp4

    try:
        reading = read_mp4(path, anchors)
    except CredentialsError as exc:
        return {"present": None, "error": str(exc)}
    out = asdict(reading)
    out["failures"] = list(reading.failures)
    if reading.watermark_digest is not None and digest is not None:
        out["matches_watermark"] = reading.watermark_digest == f"{digest:08x}"
    return out


def describe(report: dict[str, Any]) -> str:
    """The human-readable lines for one file's report."""
    name = report["file"]
    if not report["found"]:
        lines = [f"{name}: no avatarcam watermark in {report['frames']} frame(s)"]
    else:
        payload = report["payload"]
        lines = [
            f"{name}: watermark found in {report['frames_marked']}/{report['frames']} frames "
            f"({100 * report['fraction']:.1f}%); payload {payload['marker']}:{payload['digest']} "
            f"(synthetic marker : identity digest); chance of a false alarm < 1e{report['false_alarm_log10']:g}"
        ]
    if report["avatar"] is not None:
        match = "yes" if report["avatar"]["match"] else "no"
        lines.append(f"  made from {report['avatar']['file']} (digest {report['avatar']['digest']}): {match}")
    cred = report["credentials"]
    if cred is not None:
        if cred.get("error"):
            lines.append(f"  content credentials: cannot be read ({cred['error']})")
        elif not cred["present"]:
            lines.append("  content credentials: none")
        else:
            what = {
                "Trusted": "signature and content intact, signer trusted",
                "Valid": "signature and content intact; signer not trusted on this machine",
            }.get(cred["state"], "INVALID: " + ", ".join(cred["failures"]))
            lines.append(f"  content credentials: {cred['state']} ({what}); signed by {cred['signer']}")
            kind = "trainedAlgorithmicMedia" if cred["generated"] else "no AI-generation declaration"
            lines.append(f"    {kind}; subject {cred['subject']!r}; consent {cred['consent']!r}")
    return "\n".join(lines)
