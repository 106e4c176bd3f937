"""CSIM: cosine similarity of face-identity embeddings, generated vs. real.

The identity network is FaceNet (Inception-ResNet-v1, CASIA-WebFace; `models.pretrained`),
the same stand-in the training's identity loss uses; the papers use ArcFace or a VGGFace2
ResNet-50, which no registry package ships, so CSIM values are comparable between our own
runs, not with the papers' numbers.

Faces are cut from the images by square boxes (x0, y0, side in pixels: the landmarks'
bounding box enlarged 1.2x, see `face_boxes`), resampled to FaceNet's 160 x 160.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from models.evaluation.metrics.base import FrameMean, MetricWeights, check_pair, register
from models.pretrained.facenet import INPUT_SIZE, load_facenet

FACE_MARGIN = 1.2  # box side / the landmarks' larger extent (about MTCNN's box + FaceNet's margin)


def face_boxes(landmarks: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """[N, K, 2+] landmark pixels -> [N, 3] square boxes (x0, y0, side) around each face."""
    lo, hi = landmarks[..., :2].min(axis=1), landmarks[..., :2].max(axis=1)
    side = FACE_MARGIN * (hi - lo).max(axis=1)
    centre = (lo + hi) / 2
    return np.stack([centre[:, 0] - side / 2, centre[:, 1] - side / 2, side], axis=1).astype(np.float32)


def crop_faces(images: Tensor, boxes: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """images [N, 3, H, W], boxes [N, 3] (x0, y0, side) -> [N, 3, size, size], borders replicated."""
    n, _, h, w = images.shape
    assert boxes.shape == (n, 3), tuple(boxes.shape)
    b = boxes.to(images.device, images.dtype)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    # affine_grid maps output [-1, 1] to input [-1, 1] (align_corners=False: pixel edges).
    theta[:, 0, 0] = b[:, 2] / w
    theta[:, 1, 1] = b[:, 2] / h
    theta[:, 0, 2] = (2 * b[:, 0] + b[:, 2]) / w - 1
    theta[:, 1, 2] = (2 * b[:, 1] + b[:, 2]) / h - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    scale = float(b[:, 2].max()) / size
    source = images
    if scale > 1.5:  # shrinking a lot: low-pass first so the bilinear taps do not alias
        source = F.avg_pool2d(images, int(scale), 1, int(scale) // 2, count_include_pad=False)[..., :h, :w]
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)


@register("csim")
class CSIM:
    """Per-frame cosine between the generated and the real frame's identity embeddings.

    Needs `boxes` (the real frame's face box, used for both images: the frames are aligned).
    """

    name = "csim"
    higher_is_better = True

    def __init__(self, weights: MetricWeights, device: torch.device) -> None:
        self.net = load_facenet(weights.facenet).to(device)
        self.device = device
        self._frames = FrameMean()

    @torch.no_grad()
    def embed(self, images: Tensor, boxes: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] and [N, 3] boxes -> [N, 512] unit embeddings."""
        faces = crop_faces(images.to(self.device).float(), boxes)
        return self.net(faces.clamp(0, 1))

    def update(self, fake: Tensor, real: Tensor, boxes: Tensor | None = None) -> Tensor:
        check_pair(fake, real)
        if boxes is None:
            raise ValueError("CSIM needs face boxes (x0, y0, side) for each frame")
        cosine = (self.embed(fake, boxes) * self.embed(real, boxes)).sum(dim=1)
        return self._frames.add(cosine)

    def result(self) -> float:
        return self._frames.mean()
