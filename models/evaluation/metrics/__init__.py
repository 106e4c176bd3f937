"""Image-quality and identity metrics for avatar evaluation, one module per metric behind a
small registry (`METRICS`, `create_metric`).

Every metric takes batches of generated and real images ([N, 3, H, W] float in [0, 1], on the
metric's device) and accumulates over calls; `result()` gives the number a paper would
report. Per-frame metrics (PSNR, SSIM, LPIPS, CSIM) also return their [N] values from
`update`; set metrics (FID) return None there. The pretrained networks (LPIPS AlexNet and
heads, FID Inception, FaceNet) are converted once from registry packages into the cache, or
read from files the user passes (`MetricWeights`).
"""

from __future__ import annotations

from models.evaluation.metrics.base import METRICS, Metric, MetricWeights, create_metric, register

__all__ = ["METRICS", "Metric", "MetricWeights", "create_metric", "register"]

# Metrics register themselves on import; importing them here keeps the registry explicit.
from models.evaluation.metrics import csim as _csim  # noqa: F401
from models.evaluation.metrics import fid as _fid  # noqa: F401
from models.evaluation.metrics import lpips as _lpips  # noqa: F401
from models.evaluation.metrics import psnr as _psnr  # noqa: F401
from models.evaluation.metrics import ssim as _ssim  # noqa: F401
