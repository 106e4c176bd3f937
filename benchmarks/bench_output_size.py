"""What a 512-output student would cost on the CPU, against today's 256 output upscaled (issue 26 part 6).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_output_size.py [AVATAR] [--data data/cap12]
        [--frames 200] [--threads 1] [--json OUT.json]

Cost only, not quality: no 512-output student has been trained (that needs a 512 teacher or 512
ground truth in distillation, and hours of these 2 cores), so this times the network shape with
the avatar's own weights where they fit and fresh ones where they do not; onnxruntime's time
does not depend on the weights. In one run, frame by frame in turn, on the avatar's real
conditioning renders (256 px, from `--data`'s tracking):

- `256 + bicubic`: the avatar's student exported as the live service runs it (onnxruntime,
  `--threads`), then OpenCV's bicubic 2x of the image and the mask: today's output at 512;
- `512 out`: the same student with one more 2x transposed convolution at the end (256 px renders
  in, 512 out, as StyleAvatar's generator upsamples past its conditioning) and its backdrop and
  face lookup at 512.

Beside them, the VP8 encode (as a WebRTC sender) of a 256 and a 512 frame. Printed: ms p50/p90 of
each, and what each would leave of a 30 fps frame budget with the tracker's measured cost.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.avatar import load_avatar
from models.engines.onnx_engine import OnnxEngine, export_onnx
from models.networks.student import StudentNet, lookup_texels
from streamer.core.figures import percentiles
from streamer.tools.bench import Encoder
from tracking.mesh import load_canonical_mesh
from tracking.render import FaceRenderer


class Student512(nn.Module):
    """A 256-in student with a 512 output: its body unchanged, one more 2x transposed conv (w0 ->
    w0, ReLU) before a head at 512, and the backdrop and rgb_skip face lookup at 512 (the UV
    render upsampled bilinearly, since the renders stay 256)."""

    def __init__(self, student: StudentNet) -> None:
        super().__init__()
        self.body = copy.deepcopy(student)
        w0 = student.config.widths[0]
        self.up = nn.ConvTranspose2d(w0, w0, 4, stride=2, padding=1)
        self.head = nn.ConvTranspose2d(w0, 4, 4, stride=2, padding=1)
        size = student.config.image_size * 2
        self.backdrop = nn.Parameter(F.interpolate(student.backdrop.detach(), size=(size, size), mode="bilinear"))

    def forward(self, uv: Tensor, shaded: Tensor) -> tuple[Tensor, Tensor]:
        b = self.body
        x = b.decode(uv, shaded)  # [N, w0, H/2, H/2]
        out = self.head(F.relu(self.up(x))) + self.backdrop  # [N, 4, 2H, 2H]
        image = out[:, :3]
        if b.config.rgb_skip:
            uv2 = F.interpolate(uv, scale_factor=2.0, mode="bilinear")
            face = (uv2[:, 2:3] > 0).to(uv.dtype)
            image = image + face * (lookup_texels(b.texture[:, :3], uv2) - self.backdrop[:, :3])
        return image, torch.sigmoid(out[:, 3:])


def renders(data: Path, count: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real conditioning (uv [1, H, W, 3] uint16, shaded uint8) from a prepared dataset's tracking."""
    with np.load(data / "test" / "tracking.npz") as saved:
        prepared = int(saved["crop"][3])
        landmarks = saved["landmarks"].astype(np.float32) * np.float32(size / prepared)
    renderer = FaceRenderer(load_canonical_mesh(), size)
    picks = np.linspace(0, len(landmarks) - 1, count).round().astype(int)
    return [(c.uv_u16()[None], c.shaded_u8()[None]) for c in (renderer(landmarks[i]) for i in picks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("avatar", type=Path, nargs="?", default=Path("assets/demo/cap12.avatar"))
    parser.add_argument("--data", type=Path, default=Path("data/cap12"))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (the live default on 2 cores)")
    parser.add_argument("--tracker-ms", type=float, default=7.5, help="the tracker's p50 to budget with")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    avatar = load_avatar(args.avatar)
    if avatar.student is None:
        raise SystemExit(f"{args.avatar} carries no student; distil one first (avatarcam distill)")
    size = avatar.student.config.image_size
    torch.manual_seed(0)
    nets = {"256 + bicubic": copy.deepcopy(avatar.student).eval(), "512 out": Student512(avatar.student).eval()}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {  # the live onnx engine on each exported graph (its inputs are 256 px either way)
            name: OnnxEngine(avatar, model=export_onnx(net, size, Path(tmp) / f"{i}.onnx"), threads=args.threads)
            for i, (name, net) in enumerate(nets.items())
        }
        frames = renders(args.data, args.frames, size)
        encoders = {256: Encoder("vp8", size), 512: Encoder("vp8", size * 2)}
        times: dict[str, list[float]] = {name: [] for name in (*nets, "bicubic 2x", "vp8 256", "vp8 512")}
        for n, (uv, shaded) in enumerate([*frames[:10], *frames]):
            timed = n >= 10
            for name, s in sessions.items():
                start = time.perf_counter()
                out = s(uv, shaded)
                image, mask = out.image, out.mask
                if name == "256 + bicubic":
                    middle = time.perf_counter()
                    big = cv2.resize(image[0], (size * 2, size * 2), interpolation=cv2.INTER_CUBIC)
                    cv2.resize(mask[0], (size * 2, size * 2), interpolation=cv2.INTER_CUBIC)
                    if timed:
                        times["bicubic 2x"].append(time.perf_counter() - middle)
                else:
                    big = image[0]
                if timed:
                    times[name].append(time.perf_counter() - start)
                side = 512 if name == "512 out" else 256
                start = time.perf_counter()
                encoders[side](big if side == 512 else image[0])
                if timed:
                    times[f"vp8 {side}"].append(time.perf_counter() - start)
    figures = {name: percentiles(values) for name, values in times.items()}
    sides = {"256 + bicubic": 256, "512 out": 512}

    def p50(name: str) -> float:
        figure = figures[name]
        assert figure is not None, name
        return figure["p50"]

    budget = 1000 / 30
    report = {
        "avatar": args.avatar.name,
        "frames": args.frames,
        "threads": args.threads,
        "ms": figures,
        "params": {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()},
        "frame_ms_at_p50": {n: round(args.tracker_ms + p50(n) + p50(f"vp8 {side}"), 2) for n, side in sides.items()},
        "budget_ms_30fps": round(budget, 2),
        "tracker_ms_assumed": args.tracker_ms,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "weights": "the avatar's student where the shapes match; fresh for the 512 layers (timing only)",
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
