"""`avatarcam devices`: the cameras that can drive an avatar and the virtual-camera devices.

On Linux both are V4L2 nodes, /dev/videoN. A v4l2loopback device is virtual (its sysfs node
lives under /sys/devices/virtual) and is where `--sink virtualcam` publishes; any other node
is a real camera (`--source camera:N`). Elsewhere OpenCV is asked for camera indices, and the
virtual camera is whatever pyvirtualcam's platform backend opens (OBS's).
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamer.sinks.virtualcam import virtualcam_help


@dataclass(frozen=True)
class Device:
    """One video device.

    Attributes:
        index: N of /dev/videoN (the camera:N source), or OpenCV's index off Linux.
        path: the device node ("" off Linux).
        name: the driver's name for it (a v4l2loopback device's card_label).
        virtual: a virtual camera (v4l2loopback), not a camera.
        opens: whether it delivered a frame when probed (None: not probed).
    """

    index: int
    path: str
    name: str
    virtual: bool
    opens: bool | None = None


@dataclass(frozen=True)
class DeviceReport:
    """What `avatarcam devices` found, and what to do when something is missing."""

    cameras: list[Device] = field(default_factory=list)
    virtual_cameras: list[Device] = field(default_factory=list)
    camera_fix: str | None = None
    virtualcam_fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = ["cameras (--source camera:N):"]
        lines += [f"  camera:{d.index}  {d.path}  {d.name}{_opens(d)}" for d in self.cameras] or ["  none"]
        if self.camera_fix:
            lines.append(f"  {self.camera_fix}")
        lines.append("virtual cameras (--sink virtualcam):")
        lines += [f"  {d.path or d.name}  {d.name}" for d in self.virtual_cameras] or ["  none"]
        if self.virtualcam_fix:
            lines.append(f"  {self.virtualcam_fix}")
        return "\n".join(lines)


def _opens(device: Device) -> str:
    return {None: "", True: "  (delivers frames)", False: "  (did not deliver a frame)"}[device.opens]


def v4l2_devices(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> list[Device]:
    """The V4L2 nodes of this Linux machine, from sysfs (no device is opened)."""
    found = []
    for node in sorted(dev_root.glob("video*"), key=lambda p: _number(p.name)):
        index = _number(node.name)
        if index < 0:
            continue
        entry = sys_root / "class" / "video4linux" / node.name
        name_file = entry / "name"
        name = name_file.read_text().strip() if name_file.is_file() else "unknown"
        virtual = "/devices/virtual/" in str(entry.resolve()) or "loopback" in name.lower()
        found.append(Device(index, str(node), name, virtual))
    return found


def _number(name: str) -> int:
    match = re.fullmatch(r"video(\d+)", name)
    return int(match.group(1)) if match else -1


def probe_camera(index: int) -> bool:
    """Whether OpenCV opens camera `index` and reads one frame from it."""
    import cv2

    capture = cv2.VideoCapture(index)
    try:
        return bool(capture.isOpened() and capture.read()[0])
    finally:
        capture.release()


def list_devices(
    *, probe: bool = False, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev"), platform: str | None = None
) -> DeviceReport:
    """Cameras and virtual cameras here; `probe` also reads a frame from each camera."""
    platform = platform or sys.platform
    if platform.startswith("linux"):
        nodes = v4l2_devices(sys_root, dev_root)
        cameras = [d for d in nodes if not d.virtual]
        virtual = [d for d in nodes if d.virtual]
    else:
        cameras = [Device(i, "", f"camera {i}", False, True) for i in range(5) if probe_camera(i)]
        virtual = _platform_virtual_camera()
    if probe and platform.startswith("linux"):
        cameras = [Device(d.index, d.path, d.name, d.virtual, probe_camera(d.index)) for d in cameras]
    camera_fix = None
    if not cameras:
        camera_fix = (
            "no camera found: plug one in (check `ls /dev/video*`; inside a VM or container pass the device "
            "through), or drive the avatar from a video with --source file:PATH or from a browser with "
            "--source webrtc"
        )
    virtualcam_fix = None if virtual else f"no virtual camera device: {virtualcam_help()}"
    return DeviceReport(cameras, virtual, camera_fix, virtualcam_fix)


def _platform_virtual_camera() -> list[Device]:
    """Off Linux: the device pyvirtualcam's backend opens (OBS's virtual camera), if any."""
    import pyvirtualcam

    try:
        with pyvirtualcam.Camera(640, 480, 30) as camera:
            return [Device(0, "", str(camera.device), True)]
    except RuntimeError:
        return []
