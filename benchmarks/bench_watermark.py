"""The invisible watermark against the issue's bars, on real avatar output, for each candidate.

Candidates:
- `avatarcam`: the project's own spread-spectrum mark (`streamer.provenance.watermark`), 64 coded bits.
- `dwtDct`, `dwtDctSvd`: `invisible-watermark`'s DWT + DCT (+ SVD) marks with the same 64-bit
  codeword (marker + digest + CRC-16), found when that codeword decodes with a valid marker and CRC.
- `rivaGan`: `invisible-watermark`'s RivaGAN ONNX encoder/decoder, 32 bits (marker + 16
  digest bits, all it carries), found when the 16-bit marker decodes exactly.

Frames: the avatar (default: the shipped demo) driven through the live path by real driving
videos, composed with the badge, unmarked; each candidate marks them. Checks per candidate:
PSNR of marked vs unmarked, embedding cost per frame on one core at 256 px, 512 px and
1280x720, the share of frames found after each degradation (VP8 via PyAV's libvpx with
aiortc's real-time settings at 1 Mbps and 500 kbps, H.264 CRF 28, a rescale to 1280x720 and
back, a 10% crop; with the share of codeword bits read right and of frames within 2 bit errors),
false positives on every video in ../shared/data (unmarked real people: frames, and files that
`avatarcam detect` would call marked), and end to end: a file `avatarcam reenact` wrote, re-encoded
with `ffmpeg -c:v libvpx -b:v 1M`, read by `avatarcam detect --avatar`. `--checks` runs a subset
(quality, cost, fp, e2e); `--candidates` a subset of the candidates.

    nice -n 19 .venv/bin/python benchmarks/bench_watermark.py --json reports/watermark.json

`invisible-watermark` is not a project dependency: `pip install --no-deps invisible-watermark==0.2.0
PyWavelets` to measure it (its `opencv-python` requirement would sit beside mediapipe's OpenCV).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer.provenance import watermark as wm  # noqa: E402

U8 = np.ndarray
SHARED = ROOT.parent / "shared" / "data"
DRIVERS = ("512/drv_lp_d10_512.mp4", "512/drv_aoc_512.mp4")
E2E_DRIVER = "512/drv_lp_d9_512.mp4"  # a third person, not among DRIVERS
DIGEST = 0x5EC0DE42  # any 32-bit identity digest: the candidates carry it


# ---- real avatar frames -------------------------------------------------------------------------


def avatar_frames(avatar_path: Path, driver: Path, count: int) -> list[U8]:
    """Composed (badged, unmarked) frames of the avatar driven by `driver`, as `reenact` makes them."""
    from models.avatar import load_avatar
    from models.engines import create_engine
    from streamer.stages.compose import ComposeConfig, Compositor
    from streamer.tools.reenact import drive_frames
    from tracking.neutral import driver_neutral

    avatar = load_avatar(avatar_path)
    engine = create_engine("onnx", avatar, "cpu")
    try:
        neutral = driver_neutral(driver, 1.0, None)
        compositor = Compositor(ComposeConfig(watermark=False), engine.resolution, badge_required=True)
        return [shown for _, _, shown, _ in drive_frames(avatar, engine, driver, neutral, compositor, count)]
    finally:
        engine.close()


def cached_frames(args: argparse.Namespace, driver: str) -> list[U8]:
    """`avatar_frames`, kept in `--cache` as .npy between runs (same avatar, driver and count or more)."""
    if args.cache is None:
        return avatar_frames(args.avatar, SHARED / driver, args.frames)
    import hashlib

    version = hashlib.sha256(args.avatar.read_bytes()).hexdigest()[:12]  # a retrained avatar: new frames
    path = args.cache / f"{args.avatar.stem}-{version}-{Path(driver).stem}.npy"
    if path.is_file():
        frames = np.load(path)
        if len(frames) >= args.frames:
            return list(frames[: args.frames])
    frames = np.stack(avatar_frames(args.avatar, SHARED / driver, args.frames))
    args.cache.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".part.npy"), frames)  # renamed when complete: a parallel run never reads half
    path.with_suffix(".part.npy").replace(path)
    return list(frames)


# ---- degradations ---------------------------------------------------------------------------------


def vp8(frames: Sequence[U8], bitrate: int) -> tuple[list[U8], float]:
    """Encode with libvpx as aiortc's WebRTC sender does (real-time, CBR), decode; -> (frames, kbps)."""
    h, w = frames[0].shape[:2]
    enc: Any = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt, enc.bit_rate = w, h, "yuv420p", bitrate
    enc.framerate, enc.time_base, enc.gop_size, enc.qmin, enc.qmax = Fraction(30), Fraction(1, 30), 3000, 2, 56
    enc.options = {
        "bufsize": str(bitrate),
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "noise-sensitivity": "4",
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
        "threads": "1",
    }
    return _roundtrip(enc, av.CodecContext.create("libvpx", "r"), frames)


def h264(frames: Sequence[U8], crf: int) -> tuple[list[U8], float]:
    h, w = frames[0].shape[:2]
    enc: Any = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.framerate, enc.time_base = Fraction(30), Fraction(1, 30)
    enc.options = {"crf": str(crf), "threads": "1"}
    return _roundtrip(enc, av.CodecContext.create("h264", "r"), frames)


def _roundtrip(enc: Any, dec: Any, frames: Sequence[U8]) -> tuple[list[U8], float]:
    packets: list[Any] = []
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += enc.encode(frame)
    packets += enc.encode(None)
    out = [f.to_ndarray(format="rgb24") for p in packets for f in dec.decode(p)]
    out += [f.to_ndarray(format="rgb24") for f in dec.decode(None)]
    kbps = sum(p.size for p in packets) * 8 * 30 / len(frames) / 1000
    return out, kbps


def rescale(frames: Sequence[U8]) -> list[U8]:
    h, w = frames[0].shape[:2]
    up = (cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in frames)
    return [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in up]


def crop(frames: Sequence[U8]) -> list[U8]:
    """Keep the central 90% of each side (5% off every edge): the tile grid moves."""
    h, w = frames[0].shape[:2]
    dy, dx = round(h * 0.05), round(w * 0.05)
    return [np.ascontiguousarray(f[dy : h - dy, dx : w - dx]) for f in frames]


# ---- candidates -----------------------------------------------------------------------------------


class Candidate:
    name = ""
    embed: Callable[[U8], U8]
    bits: np.ndarray  # the codeword embedded

    def found(self, rgb: U8) -> bool:
        raise NotImplementedError

    def _bits(self, rgb: U8) -> np.ndarray | None:
        raise NotImplementedError

    def bit_errors(self, rgb: U8) -> int:
        """Codeword bits read wrong, before any correction (half of them when nothing is read)."""
        bits = self._bits(rgb)
        return int(np.sum(bits != self.bits)) if bits is not None else len(self.bits) // 2


class Ours(Candidate):
    name = "avatarcam"

    def __init__(self) -> None:
        self.mark = wm.Watermarker(DIGEST)
        self.embed = self.mark
        self.bits = wm.encode_payload(DIGEST)

    def _bits(self, rgb: U8) -> np.ndarray:
        return (wm.read_frame(rgb).bit_z > 0).astype(np.uint8)  # before any CRC correction

    def found(self, rgb: U8) -> bool:
        reading = wm.read_frame(rgb)
        return reading.found and reading.digest == DIGEST

    def any_mark(self, lumas: Iterator[np.ndarray]) -> tuple[int, int]:
        reading = wm.read_lumas(lumas)
        return reading.frames, reading.found


class DwtDct(Candidate):
    name = "dwtDct"

    def __init__(self, method: str = "dwtDct") -> None:
        from imwatermark import WatermarkDecoder, WatermarkEncoder

        self.bits = wm.encode_payload(DIGEST)
        self.encoder = WatermarkEncoder()
        self.encoder.set_watermark("bits", self.bits.tolist())
        self.decoder = WatermarkDecoder("bits", len(self.bits))
        self.name = self.method = method

    def embed(self, rgb: U8) -> U8:
        bgr = self.encoder.encode(np.ascontiguousarray(rgb[..., ::-1]), self.method)
        return np.ascontiguousarray(bgr[..., ::-1])

    def _bits(self, rgb: U8) -> np.ndarray | None:
        if rgb.shape[0] * rgb.shape[1] < 256 * 256:
            return None  # the library refuses frames under 256 x 256
        return np.asarray(self.decoder.decode(np.ascontiguousarray(rgb[..., ::-1]), self.method), np.uint8)

    def found(self, rgb: U8) -> bool:
        bits = self._bits(rgb)
        return bits is not None and wm.check_payload(bits) == DIGEST

    def any_mark(self, rgb: U8) -> bool:
        bits = self._bits(rgb)
        return bits is not None and wm.check_payload(bits) is not None


class RivaGan(Candidate):
    name = "rivaGan"

    def __init__(self) -> None:
        import onnxruntime
        from imwatermark.rivaGan import RivaWatermark

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # one core, like the others
        folder = Path(sys.modules["imwatermark.rivaGan"].__file__ or "").parent
        RivaWatermark.encoder = onnxruntime.InferenceSession(str(folder / "rivagan_encoder.onnx"), options)
        RivaWatermark.decoder = onnxruntime.InferenceSession(str(folder / "rivagan_decoder.onnx"), options)
        self.bits = wm.encode_payload(DIGEST)[:32]  # marker + the digest's first 16 bits
        self.riva = RivaWatermark(self.bits.tolist(), 32)
        self.reader = RivaWatermark([], 32)

    def embed(self, rgb: U8) -> U8:
        return np.ascontiguousarray(self.riva.encode(np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1])

    def _bits(self, rgb: U8) -> np.ndarray:
        return np.asarray(self.reader.decode(np.ascontiguousarray(rgb[..., ::-1])), np.uint8)

    def found(self, rgb: U8) -> bool:
        return bool(np.array_equal(self._bits(rgb), self.bits))

    def any_mark(self, rgb: U8) -> bool:
        return bool(np.array_equal(self._bits(rgb)[: wm.MARKER_BITS], self.bits[: wm.MARKER_BITS]))


# ---- measurements ---------------------------------------------------------------------------------


def psnr(marked: Sequence[U8], clean: Sequence[U8]) -> float:
    mse = float(np.mean([np.mean((m.astype(np.float64) - c) ** 2) for m, c in zip(marked, clean, strict=True)]))
    return 10 * np.log10(255**2 / mse) if mse > 0 else float("inf")


def _load() -> dict[str, Any]:
    """The conditions a timing ran under: a loaded machine distorts wall time, less so CPU time."""
    return {
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _timed(fn: Callable[[U8], Any], frames: Sequence[U8]) -> tuple[float, float]:
    """Median (CPU ms, wall ms) of fn per frame, on this thread."""
    cpu, wall = [], []
    for f in frames:
        c, w = time.thread_time(), time.perf_counter()
        fn(f)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    return round(float(np.median(cpu)) * 1000, 3), round(float(np.median(wall)) * 1000, 3)


def embed_ms(
    candidate: Candidate, frames: Sequence[U8], sizes: Sequence[tuple[int, int]], count: int
) -> dict[str, Any]:
    """Per resolution: median embedding and single-frame reading cost, CPU time and wall time."""
    out: dict[str, Any] = {"conditions": _load()}
    for w, h in sizes:
        scaled = [np.ascontiguousarray(cv2.resize(f, (w, h))) for f in frames[:count]]
        candidate.embed(scaled[0])  # the first call builds caches (patterns, sessions)
        embed_cpu, embed_wall = _timed(candidate.embed, scaled)
        marked = [candidate.embed(f) for f in scaled[: max(1, count // 4)]]
        read_cpu, read_wall = _timed(candidate.found, marked)
        out[f"{w}x{h}"] = {
            "embed_cpu_ms": embed_cpu,
            "embed_wall_ms": embed_wall,
            "read_cpu_ms": read_cpu,
            "read_wall_ms": read_wall,
            "frames": len(scaled),
        }
    return out


def video_frames(path: Path, stride: int) -> Iterator[U8]:
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i % stride == 0:
                yield frame.to_ndarray(format="rgb24")


def false_positives(candidate: Candidate, stride: int) -> dict[str, Any]:
    """Frames of every unmarked real video read as marked, and files `detect` would call marked."""
    videos = sorted(SHARED.glob("*/*.mp4"))
    frames = hits = flagged = 0
    per_video = {}
    for path in videos:
        flag: bool | None = None
        if isinstance(candidate, Ours):
            from streamer.provenance.detect import file_found, read_file

            # stride 1: the `avatarcam detect` path itself (every frame's luma from the decoder)
            reading = read_file(path) if stride == 1 else wm.read_lumas(wm.luma(f) for f in video_frames(path, stride))
            n, k, flag = reading.frames, reading.found, file_found(reading)
            flagged += flag
        else:
            results = [candidate.any_mark(f) for f in video_frames(path, stride)]  # type: ignore[attr-defined]
            n, k = len(results), int(sum(results))
        per_video[str(path.relative_to(SHARED))] = {"found": k, "frames": n, "file_flagged": flag}
        print(f"  false positives {path.name}: {k} of {n} frames, file flagged {flag}", file=sys.stderr, flush=True)
        frames += n
        hits += k
    return {
        "frames": frames,
        "false_positives": hits,
        "rate": hits / max(frames, 1),
        "files": len(videos),
        "files_flagged": flagged if isinstance(candidate, Ours) else None,
        "stride": stride,
        "per_video": per_video,
    }


def measure(candidate: Candidate, clean: list[U8]) -> dict[str, Any]:
    """PSNR and the share of frames found after each degradation."""
    marked = [candidate.embed(f) for f in clean]
    report: dict[str, Any] = {"frames": len(marked), "psnr_db": round(psnr(marked, clean), 2)}
    rates: dict[str, Any] = {}
    degraded: dict[str, Callable[[], tuple[list[U8], float | None]]] = {
        "clean": lambda: (marked, None),
        "vp8_1mbps": lambda: vp8(marked, 1_000_000),
        "vp8_500kbps": lambda: vp8(marked, 500_000),
        "h264_crf28": lambda: h264(marked, 28),
        "rescale_1280x720_and_back": lambda: (rescale(marked), None),
        "crop_10pct": lambda: (crop(marked), None),
    }
    for name, make in degraded.items():
        frames, kbps = make()
        found = [candidate.found(f) for f in frames]
        errors = np.array([candidate.bit_errors(f) for f in frames])
        rates[name] = {
            "found": round(float(np.mean(found)), 4),
            "frames": len(found),
            "missed": len(found) - sum(found),
            "bit_accuracy": round(1 - float(np.mean(errors)) / len(candidate.bits), 4),
            # what a decoder correcting any 2 bit errors could find at most (the DWT marks give no
            # soft bits, so their `found` corrects none; avatarcam's flips 2 of its 8 weakest)
            "within_2_bit_errors": round(float(np.mean(errors <= 2)), 4),
        }
        if kbps is not None:
            rates[name]["kbps"] = round(kbps, 1)
        print(f"  {name}: {rates[name]}", file=sys.stderr, flush=True)
    report["detection"] = rates
    report["unmarked_found"] = round(float(np.mean([candidate.found(f) for f in clean])), 4)
    unmarked_vp8, _ = vp8(clean, 1_000_000)
    report["unmarked_vp8_1mbps_found"] = round(float(np.mean([candidate.found(f) for f in unmarked_vp8])), 4)
    return report


def end_to_end(avatar: Path, driver: Path, frames: int, folder: Path) -> dict[str, Any]:
    """`avatarcam reenact` -> `ffmpeg -c:v libvpx -b:v 1M` -> `avatarcam detect --avatar`, as commands."""
    import shutil
    import subprocess

    cli = [sys.executable, str(ROOT / "avatarcam_cli.py")]
    folder.mkdir(parents=True, exist_ok=True)
    mp4, webm = folder / "reenact.mp4", folder / "reenact-vp8-1M.webm"
    reenact = [
        *cli,
        "reenact",
        str(avatar),
        str(driver),
        "-o",
        str(mp4),
        "--max-frames",
        str(frames),
        "--backend",
        "onnx",
    ]
    subprocess.run(reenact, check=True, stdout=subprocess.DEVNULL)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("ffmpeg is not on PATH: the end-to-end check needs it (the test falls back to PyAV)")
    version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", str(mp4), "-c:v", "libvpx", "-b:v", "1M", "-an", str(webm)], check=True
    )
    detect = subprocess.run(
        [*cli, "detect", str(mp4), str(webm), "--avatar", str(avatar), "--json"], capture_output=True, text=True
    )
    original, reencoded = json.loads(detect.stdout)
    kbps = webm.stat().st_size * 8 / 1000 / max(reencoded["frames"] / 25, 1e-9)
    summary = {
        "reenact": " ".join(reenact[1:]),
        "ffmpeg": version,
        "detect_exit_code": detect.returncode,
        "webm_kbps_at_25fps": round(kbps, 1),
    }
    for name, r in (("mp4", original), ("webm", reencoded)):
        cred = r["credentials"]
        summary[name] = {
            "found": r["found"],
            "frames": r["frames"],
            "fraction": r["fraction"],
            "avatar_match": r["avatar"]["match"],
            "credentials": None if cred is None else cred.get("state", cred.get("error")),
        }
    return summary


CHECKS = ("quality", "cost", "fp", "e2e")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", type=Path, default=ROOT / "assets" / "demo" / "cap12.avatar")
    parser.add_argument("--frames", type=int, default=150, help="avatar frames per driving video")
    parser.add_argument("--candidates", default="avatarcam,dwtDct,dwtDctSvd,rivaGan")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"any of {','.join(CHECKS)}")
    parser.add_argument("--other-frames", type=int, default=40, help="frames per driver for invisible-watermark")
    parser.add_argument("--rivagan-frames", type=int, default=15, help="RivaGAN is slow: frames per driver it gets")
    parser.add_argument("--fp-stride", type=int, default=5, help="every k-th frame for the other candidates' FP scan")
    parser.add_argument("--ours-fp-stride", type=int, default=1, help="every k-th frame for avatarcam's FP scan")
    parser.add_argument("--cost-frames", type=int, default=60, help="frames timed per resolution")
    parser.add_argument("--e2e-frames", type=int, default=100, help="driver frames `reenact` renders for the e2e check")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--cache", type=Path, help="keep the generated avatar frames here (.npy) and reuse them")
    args = parser.parse_args(argv)
    checks = set(args.checks.split(","))
    if checks - set(CHECKS):
        parser.error(f"unknown checks {sorted(checks - set(CHECKS))}; choose from {CHECKS}")
    cv2.setNumThreads(1)  # one core: the cost bar, and every candidate alike

    report: dict[str, Any] = {"avatar": str(args.avatar), "drivers": list(DRIVERS), "checks": sorted(checks)}
    report["candidates"] = {}

    def save() -> None:  # after each step: a slow one later does not lose the earlier ones
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))

    clean_by_driver = {d: cached_frames(args, d) for d in DRIVERS} if checks & {"quality", "cost"} else {}
    makers: dict[str, Callable[[], Candidate]] = {
        "avatarcam": Ours,
        "dwtDct": DwtDct,
        "dwtDctSvd": lambda: DwtDct("dwtDctSvd"),
        "rivaGan": RivaGan,
    }
    for name in args.candidates.split(",") if checks - {"e2e"} else []:
        try:
            candidate = makers[name]()
        except ImportError as exc:
            report["candidates"][name] = {"skipped": f"not installed: {exc}"}
            continue
        result: dict[str, Any] = report["candidates"].setdefault(name, {})
        limit = {"avatarcam": args.frames, "rivaGan": args.rivagan_frames}.get(name, args.other_frames)
        clean = [f for frames in clean_by_driver.values() for f in frames[:limit]]
        if "quality" in checks:
            print(f"{name}: {len(clean)} frames", file=sys.stderr)
            result.update(measure(candidate, clean))
            save()
        if "cost" in checks:
            count = args.cost_frames if name == "avatarcam" else 8
            result["cost"] = embed_ms(candidate, clean, [(256, 256), (512, 512), (1280, 720)], count)
            print(f"  cost: {result['cost']}", file=sys.stderr, flush=True)
            save()
        if "fp" in checks:
            stride = args.ours_fp_stride if name == "avatarcam" else args.fp_stride * (4 if name == "rivaGan" else 1)
            result["false_positives"] = false_positives(candidate, stride)
            save()
    if "e2e" in checks:
        folder = (args.json.parent if args.json else Path("reports")) / "watermark-e2e"
        report["end_to_end"] = end_to_end(args.avatar, SHARED / E2E_DRIVER, args.e2e_frames, folder)
        save()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
