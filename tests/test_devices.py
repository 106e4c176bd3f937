"""`avatarcam devices`: cameras and virtual cameras from a V4L2 sysfs tree (a fake one in a
temp dir, laid out like the kernel's), and this machine's own answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avatarcam_cli import main
from streamer.tools.devices import list_devices


def _fake_v4l2(root: Path) -> tuple[Path, Path]:
    """/dev/video0 a USB webcam, /dev/video2 a v4l2loopback device (sysfs under devices/virtual)."""
    dev, sys_root = root / "dev", root / "sys"
    dev.mkdir()
    nodes = {
        "video0": ("devices/pci0000:00/usb1/1-1/video4linux/video0", "Integrated Camera"),
        "video2": ("devices/virtual/video4linux/video2", "avatarcam"),
    }
    for node, (where, name) in nodes.items():
        (dev / node).touch()
        real = sys_root / where
        real.mkdir(parents=True)
        (real / "name").write_text(name + "\n")
        link = sys_root / "class" / "video4linux" / node
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real)
    (dev / "video-not-a-node").touch()
    return sys_root, dev


def test_cameras_and_loopback_devices_are_told_apart(tmp_path: Path) -> None:
    sys_root, dev = _fake_v4l2(tmp_path)
    report = list_devices(sys_root=sys_root, dev_root=dev, platform="linux")
    assert [(d.index, d.name) for d in report.cameras] == [(0, "Integrated Camera")]
    assert [(d.path, d.name) for d in report.virtual_cameras] == [(str(dev / "video2"), "avatarcam")]
    assert report.camera_fix is None and report.virtualcam_fix is None
    assert "camera:0" in report.text() and "avatarcam" in report.text()


def test_nothing_found_says_how_to_fix_it(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    report = list_devices(sys_root=tmp_path / "sys", dev_root=tmp_path / "dev", platform="linux")
    assert not report.cameras and not report.virtual_cameras
    assert report.camera_fix is not None and "--source file:PATH" in report.camera_fix
    assert report.virtualcam_fix is not None and "modprobe v4l2loopback" in report.virtualcam_fix


def test_devices_command_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    here = sorted(Path("/dev").glob("video*"))
    assert len(report["cameras"]) + len(report["virtual_cameras"]) == len(here)
    if not report["virtual_cameras"]:
        assert "v4l2loopback" in report["virtualcam_fix"]
