"""Small stand-in auxiliary models for the test checkpoint tree.

:func:`write_aux_test_models` writes ONNX files (and a MediaPipe ``.task``
bundle) with the OFFICIAL file names, tensor names, shapes and dtypes of the
Ditto checkpoints (docs/pipeline.md §2, §4.1), so that every loader and wrapper can
be exercised on a CPU without the real weights. They are not trained networks;
their weights are designed so that avatar registration behaves sanely and
deterministically on real portraits:

* SCRFD stand-in: one face on any textured image (a box centred in the
  letterboxed content, with eye/nose/mouth keypoints), nothing on a flat one —
  scores = fixed spatial prior × a sigmoid of the image's coarse-scale mean
  absolute gradient.
* landmark106 / landmark203: a fixed face-shaped template (correct anchor
  indices for the crop geometry) plus a small image-dependent shift.
* blaze_face: one face box centred in the 512 crop, gated like SCRFD.
* face_mesh / face_landmarker.task: a fixed 478-point template whose eyes,
  lids and irises sit at MediaPipe's indices (eye-info friendly).
* hubert (``hubert="large"``, the default): the real architecture,
  :class:`~ditto.backends.talkinghead.models.hubert.HubertLarge` (24 layers, 315 M parameters,
  a 1.26 GB file) with seeded random weights (LayerNorm gains/biases jittered so that they are
  not all 1/0), exported by :func:`~ditto.backends.talkinghead.models.hubert.export_hubert_onnx`
  (every initializer named ``hubert.<HF key>``), so HuBERT costs what the official one costs;
  ~25 s on two CPU cores. ``ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx`` is a hard
  link to ``ditto_onnx/hubert.onnx`` where the file system allows (same bytes either way).
  ``hubert="small"``: a strided conv front end (window 400, hop 320), 170 KB, for fast tests.
  Both take a dynamic sample axis → ``(⌊(L − 400)/320⌋ + 1, 1024)``, genuinely audio-dependent.

The ``.task`` bundle holds MediaPipe's own short-range BlazeFace detector
(``face_detection_short_range.tflite``, shipped inside the mediapipe wheel,
Apache-2.0), a hand-built TFLite landmarks model, a hand-built blend-shape model
(``face_blendshapes.tflite``: (1, 146, 2) → (52,) sigmoid scores from seeded random
weights) and ``geometry_pipeline_metadata_landmarks.binarypb`` (a canonical mesh made
from the template's 468 face points), so FaceLandmarker opens it with upstream's
``output_face_blendshapes=True`` and ``output_facial_transformation_matrixes=True``
as well as without them (the blend shapes and matrices mean nothing; the landmarks
are the same either way). Without mediapipe installed the ``.task`` file is skipped (logged).

Not imported by the runtime. Usage::

    python -m ditto.tools.aux_test_models ONNX_DIR PYTORCH_AUX_DIR [--seed N] [--hubert large|small]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ditto.backends.talkinghead.aux_models.face_detector import DITTO_OUTPUT_NAMES, FEAT_STRIDES, anchor_centers
from ditto.backends.talkinghead.aux_models.face_mesh import (
    EYE_L_LIDS,
    EYE_L_WIDTH,
    EYE_R_LIDS,
    EYE_R_WIDTH,
    IRIS_L,
    IRIS_R,
    blaze_anchors,
)
from ditto.backends.talkinghead.aux_models.landmarks import ANCHOR_INDICES
from ditto.backends.talkinghead.models.hubert import HubertLarge, export_hubert_onnx

logger = logging.getLogger(__name__)

OPSET = 17
#: ``hubert`` choices of :func:`write_aux_test_models`: the real architecture, or a tiny conv.
HUBERT_STAND_INS = ("large", "small")

# Original (pre-Ditto) tensor names. det_10g / 2d106det: insightface buffalo_l.
DET10G_INPUT = "input.1"
DET10G_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
# The LivePortrait landmark.onnx has three outputs (landmarks = the third); their
# names are not documented upstream (wrappers index by position) — placeholders.
LMK203_ORI_OUTPUTS = ("output_0", "output_1", "output_2")

# --------------------------------------------------------------------------- templates
# Face-unit coordinates: the landmark cloud spans [-0.5, 0.5] on both axes,
# x to the image right, y down; eyes at y = -0.12, lips at y = +0.25.
_EYE_A = (-0.2, -0.12)
_EYE_B = (0.2, -0.12)
_LIP_UP = (0.0, 0.22)
_LIP_DOWN = (0.0, 0.28)


def _ring(n: int, rx: float, ry: float, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _eye_quad(center: tuple[float, float]) -> np.ndarray:
    """Four points (outer, top, inner, bottom style) whose mean is ``center``."""
    cx, cy = center
    return np.array([[cx - 0.06, cy], [cx, cy - 0.025], [cx + 0.06, cy], [cx, cy + 0.025]])


def face_template(num_points: int, eye_a: tuple[int, ...], eye_b: tuple[int, ...], lips: tuple[int, int]) -> np.ndarray:
    """(num_points, 2) face-unit template: an oval outline plus the crop anchors.

    ``eye_a`` / ``eye_b`` (4 indices each) average to the two eye centres,
    ``lips`` to the lip centre (the anchor sets of
    :data:`~ditto.backends.talkinghead.aux_models.landmarks.ANCHOR_INDICES`).
    """
    pts = _ring(num_points, 0.5, 0.5, phase=0.37)
    pts[list(eye_a)] = _eye_quad(_EYE_A)
    pts[list(eye_b)] = _eye_quad(_EYE_B)
    pts[lips[0]] = _LIP_UP
    pts[lips[1]] = _LIP_DOWN
    return pts.astype(np.float32)


def landmark106_template() -> np.ndarray:
    """``fc1`` layout: (106, 2) in [-1, 1] of the 192 crop (face box = 128 px)."""
    pts = face_template(106, *ANCHOR_INDICES[106])
    return pts * (128.0 / 96.0)


def landmark203_template() -> np.ndarray:
    """``landmarks`` layout: (203, 2) in [0, 1] of the 224 crop (scale 1.5, vy -0.1)."""
    pts = face_template(203, *ANCHOR_INDICES[203])
    scale = 1.5  # cloud extent 1 face unit -> crop side 1.5 units
    return np.stack([0.5 + pts[:, 0] / scale, 0.5 + 0.1 + pts[:, 1] / scale], axis=1).astype(np.float32)


def mesh_template(input_size: int = 256) -> np.ndarray:
    """(478, 3) MediaPipe-like mesh in ROI-input pixels.

    Eye corners, lids and irises sit at MediaPipe's indices so that eye info is
    meaningful (open ratio ≈ 0.78, irises centred); the other points form a
    face oval with a shallow z bulge.
    """
    n = input_size
    face = n / 1.5  # face box side inside the 1.5× ROI
    c = n / 2
    pts = np.zeros((478, 3), np.float64)
    oval = _ring(478, 0.45 * face, 0.6 * face, phase=0.11)
    pts[:, 0] = c + oval[:, 0]
    pts[:, 1] = c + 0.05 * face + oval[:, 1]
    inner = np.arange(0, 478, 3)
    pts[inner, 0] = c + 0.6 * oval[inner, 0]
    pts[inner, 1] = c + 0.05 * face + 0.6 * oval[inner, 1]
    r2 = ((pts[:, 0] - c) / (0.45 * face)) ** 2 + ((pts[:, 1] - c) / (0.6 * face)) ** 2
    pts[:, 2] = -0.08 * face * np.clip(1.0 - r2, 0.0, None)

    half_w = 0.09 * face
    lid = ((0.0, 0.026), (-0.035, 0.022), (0.035, 0.02))  # (dx, half height) in face units

    def eye(center_x: float, width_idx: tuple[int, int], pairs, iris: int, mirror: float) -> None:
        outer, inner_i = width_idx
        cy = c - 0.14 * face
        pts[outer, :2] = (center_x + mirror * half_w, cy)
        pts[inner_i, :2] = (center_x - mirror * half_w, cy)
        for (lower, upper), (dx, hh) in zip(pairs, lid):
            x = center_x + mirror * dx * face
            pts[lower, :2] = (x, cy + hh * face)
            pts[upper, :2] = (x, cy - hh * face)
        gaze_y = cy + 0.008 * face  # irises a touch low: a non-zero eye_ball
        pts[iris, :2] = (center_x, gaze_y)
        ring = _ring(4, 0.035 * face, 0.035 * face)
        pts[iris + 1 : iris + 5, 0] = center_x + ring[:, 0]
        pts[iris + 1 : iris + 5, 1] = gaze_y + ring[:, 1]
        pts[[outer, inner_i, iris, *range(iris + 1, iris + 5)], 2] = -0.05 * face
        for pair in pairs:
            pts[list(pair), 2] = -0.05 * face

    # "L" eye (mesh naming) on the image left, outer corner further left.
    eye(c - 0.21 * face, EYE_L_WIDTH, EYE_L_LIDS, IRIS_L, mirror=-1.0)
    eye(c + 0.21 * face, EYE_R_WIDTH, EYE_R_LIDS, IRIS_R, mirror=1.0)
    return pts.astype(np.float32)


# --------------------------------------------------------------------------- stand-in nets


def _contrast(img: torch.Tensor, valid: torch.Tensor, pool: int) -> torch.Tensor:
    """Mean |gradient| of the ``pool``-averaged image over fully valid cells (NCHW)."""
    if pool > 1:
        img = nn.functional.avg_pool2d(img, pool)
        valid = (nn.functional.avg_pool2d(valid, pool) > 0.999).to(img.dtype)
    gx = (img[..., :, 1:] - img[..., :, :-1]).abs() * valid[..., :, 1:] * valid[..., :, :-1]
    gy = (img[..., 1:, :] - img[..., :-1, :]).abs() * valid[..., 1:, :] * valid[..., :-1, :]
    count = valid.sum() * img.shape[1] * 2 + 1.0
    return (gx.sum() + gy.sum()) / count


class ScrfdStandIn(nn.Module):
    """(1,3,512,512) SCRFD blob → 9 outputs: one centred face if the image is textured."""

    # keypoints relative to the box (fraction of side): eyes, nose, mouth corners
    KPS = ((0.32, 0.40), (0.68, 0.40), (0.50, 0.58), (0.36, 0.76), (0.64, 0.76))

    index: torch.Tensor  # buffers
    kps_rel: torch.Tensor

    def __init__(self, size: int = 512, tau: float = 0.03, gain: float = 300.0) -> None:
        super().__init__()
        self.size, self.tau, self.gain = size, tau, gain
        for stride in FEAT_STRIDES:
            side = size // stride
            self.register_buffer(f"anchors{stride}", torch.tensor(anchor_centers(side, side, stride)))
        self.register_buffer("index", torch.arange(1, size + 1, dtype=torch.float32))
        self.register_buffer("kps_rel", torch.tensor(self.KPS, dtype=torch.float32))

    def forward(self, image: torch.Tensor):
        valid = (image.amax(dim=1, keepdim=True) > -0.99).to(image.dtype)
        width = (valid.amax(dim=2).reshape(-1) * self.index).amax()
        height = (valid.amax(dim=3).reshape(-1) * self.index).amax()
        gate = torch.sigmoid(self.gain * (_contrast(image, valid, 4) - self.tau))
        side = 0.5 * torch.minimum(width, height)
        cx, cy = 0.5 * width, 0.47 * height
        x1, y1 = cx - side / 2, cy - side / 2
        x2, y2 = cx + side / 2, cy + side / 2
        kx = x1 + self.kps_rel[:, 0] * side
        ky = y1 + self.kps_rel[:, 1] * side
        sigma = 0.12 * side + 1.0
        scores, boxes, kps = [], [], []
        for stride in FEAT_STRIDES:
            a = getattr(self, f"anchors{stride}")
            ax, ay = a[:, 0:1], a[:, 1:2]
            prior = torch.exp(-((ax - cx) ** 2 + (ay - cy) ** 2) / (2 * sigma**2))
            level = 1.0 if stride == 16 else 0.0
            scores.append(gate * prior * level)
            boxes.append(torch.cat([ax - x1, ay - y1, x2 - ax, y2 - ay], dim=1) / stride)
            offs = torch.stack([kx[None, :] - ax, ky[None, :] - ay], dim=2)  # (N, 5, 2)
            kps.append(offs.reshape(-1, 10) / stride)
        return (*scores, *boxes, *kps)


class TemplateLandmarks(nn.Module):
    """Image → template landmarks + a small image-dependent global shift."""

    template: torch.Tensor  # buffers
    mix: torch.Tensor

    def __init__(self, template: np.ndarray, input_scale: float, shift: float, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("template", torch.tensor(template.reshape(1, -1), dtype=torch.float32))
        self.register_buffer("mix", torch.randn(3, 2, generator=generator))
        self.input_scale, self.shift = input_scale, shift
        self.n = template.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3)) * self.input_scale - 0.5  # (1, 3)
        delta = self.shift * torch.tanh(pooled @ self.mix)  # (1, 2)
        return self.template + delta.repeat(1, self.n)


class Landmark203Ori(nn.Module):
    """LivePortrait landmark.onnx stand-in: three outputs, the third is the 203 points."""

    def __init__(self, core: TemplateLandmarks) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor):
        pts = self.core(x)
        return pts[:, :212] * 1.0, pts[:, :2] * 1.0, pts


class BlazeStandIn(nn.Module):
    """(1,128,128,3) in [-1,1] → regressors (1,896,16), classificators (1,896,1)."""

    BOX = (0.5, 0.58, 0.42, 0.42)  # cx, cy, w, h of the face in the 512 crop (normalised)
    KPS = ((0.41, 0.52), (0.59, 0.52), (0.5, 0.6), (0.5, 0.68), (0.3, 0.55), (0.7, 0.55))

    raw: torch.Tensor  # buffers
    prior: torch.Tensor
    xy_mask: torch.Tensor
    mix: torch.Tensor

    def __init__(self, anchors: np.ndarray, generator: torch.Generator, tau: float = 0.03, gain: float = 300.0) -> None:
        super().__init__()
        cx, cy, w, h = self.BOX
        a = torch.tensor(anchors, dtype=torch.float32)
        raw = torch.zeros(a.shape[0], 16)
        raw[:, 0], raw[:, 1] = 128 * (cx - a[:, 0]), 128 * (cy - a[:, 1])
        raw[:, 2], raw[:, 3] = 128 * w, 128 * h
        for k, (kx, ky) in enumerate(self.KPS):
            raw[:, 4 + 2 * k] = 128 * (kx - a[:, 0])
            raw[:, 5 + 2 * k] = 128 * (ky - a[:, 1])
        dist2 = (a[:, 0] - cx) ** 2 + (a[:, 1] - cy) ** 2
        prior = torch.exp(-dist2 / (2 * 0.06**2))
        prior[:512] = 0.0  # only the stride-16 layers fire
        self.register_buffer("raw", raw[None])
        self.register_buffer("prior", prior.reshape(1, -1, 1))
        xy_mask = torch.ones(16)
        xy_mask[2:4] = 0.0
        self.register_buffer("xy_mask", xy_mask)
        self.register_buffer("mix", torch.randn(3, generator=generator))
        self.tau, self.gain = tau, gain

    def forward(self, image: torch.Tensor):
        nchw = image.permute(0, 3, 1, 2)
        ones = torch.ones_like(nchw[:, :1])
        gate = torch.sigmoid(self.gain * (_contrast(nchw, ones, 2) - self.tau))
        p = gate * self.prior
        logits = torch.log(p + 1e-6) - torch.log(1.0 - p + 1e-6)
        jitter = 0.5 * torch.tanh((nchw.mean(dim=(2, 3)) * self.mix).sum())  # ≤ 0.5 px of 128
        return self.raw + jitter * self.xy_mask, logits


class MeshStandIn(nn.Module):
    """(1,256,256,3) ROI → Identity (1,1,1,1434), Identity_1/Identity_2 (1,1,1,1)."""

    template: torch.Tensor  # buffers
    mix: torch.Tensor

    def __init__(self, template: np.ndarray, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("template", torch.tensor(template.reshape(1, 1, 1, -1), dtype=torch.float32))
        self.register_buffer("mix", torch.randn(3, generator=generator))

    def forward(self, x: torch.Tensor):
        m = x.mean(dim=(1, 2))  # (1, 3)
        jitter = 0.5 * torch.tanh((m * self.mix).sum())
        flag = 10.0 + 0.0 * m.sum()
        return self.template + jitter, flag.reshape(1, 1, 1, 1), (flag * 0.0).reshape(1, 1, 1, 1)


class HubertStandIn(nn.Module):
    """(1, L) audio → (T, 1024), T = ⌊(L − 400)/320⌋ + 1, through a strided conv."""

    def __init__(self, generator: torch.Generator, channels: int = 32) -> None:
        super().__init__()
        self.front = nn.Conv1d(1, channels, kernel_size=400, stride=320)
        self.proj = nn.Conv1d(channels, 1024, kernel_size=1)
        assert self.front.bias is not None and self.proj.bias is not None  # Conv1d's bias=True default
        with torch.no_grad():
            self.front.weight.copy_(torch.randn(self.front.weight.shape, generator=generator) * 0.2)
            self.front.bias.zero_()
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=generator) / math.sqrt(channels))
            self.proj.bias.copy_(torch.randn(1024, generator=generator) * 0.1)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.front(input_values[:, None, :]))
        return self.proj(h)[0].transpose(0, 1)


def build_hubert_large_stand_in(seed: int) -> HubertLarge:
    """HubertLarge (default, large config) with weights drawn from ``seed`` alone, eval mode, CPU.

    Default PyTorch initialisation, then every LayerNorm gain 1 + 0.1·N(0, 1) and bias
    0.1·N(0, 1), as a trained model has (and so that a mapping that swaps them is caught).
    Uses a private RNG state (the caller's global torch RNG is left untouched).
    """
    digest = hashlib.sha256(f"{seed}:hubert_large".encode()).digest()
    torch_seed = int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        module = HubertLarge()
    gen = torch.Generator().manual_seed(torch_seed ^ 1)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.LayerNorm):
                layer.weight.copy_(1.0 + 0.1 * torch.randn(layer.weight.shape, generator=gen))
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))
    return module.eval()


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(src, dst)


# --------------------------------------------------------------------------- export


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    module.eval()
    safe_inputs = [f"in_{i}" for i in range(len(input_names))]
    safe_outputs = [f"out_{i}" for i in range(len(output_names))]
    if dynamic_axes:
        lookup = dict(zip(input_names, safe_inputs)) | dict(zip(output_names, safe_outputs))
        dynamic_axes = {lookup[k]: v for k, v in dynamic_axes.items()}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buffer,  # type: ignore[arg-type]  # a file-like object works (legacy exporter); torch annotates paths only
            input_names=safe_inputs,
            output_names=safe_outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    _rename_tensors(model, dict(zip(safe_inputs, input_names)) | dict(zip(safe_outputs, output_names)))
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def _rename_tensors(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename graph tensors in place (TorchScript refuses names such as ``448``)."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


class _TfliteGraph:
    """A one-subgraph TFLite model written with the flatbuffer schema shipped in mediapipe."""

    def __init__(self) -> None:
        from mediapipe.tasks.metadata import schema_py_generated as fb

        self.fb = fb
        self.buffers = [fb.BufferT()]
        self.tensors: list = []
        self.opcodes: list = []
        self.operators: list = []

    def tensor(
        self, name: str, shape: tuple[int, ...], const: np.ndarray | None = None, dtype: int | None = None
    ) -> int:
        fb = self.fb
        buf = fb.BufferT()
        if const is not None:
            buf.data = np.frombuffer(np.ascontiguousarray(const).tobytes(), dtype=np.uint8)
        self.buffers.append(buf)
        t = fb.TensorT()
        t.name, t.shape, t.buffer = name, list(shape), len(self.buffers) - 1
        t.type = fb.TensorType.FLOAT32 if dtype is None else dtype
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int, options) -> None:
        fb = self.fb
        index = next((i for i, c in enumerate(self.opcodes) if c.builtinCode == code), None)
        if index is None:
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            self.opcodes.append(c)
            index = len(self.opcodes) - 1
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.operators.append(o)

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        fb = self.fb
        graph = fb.SubGraphT()
        graph.tensors, graph.inputs, graph.outputs, graph.operators = self.tensors, inputs, outputs, self.operators
        graph.name = "main"
        model = fb.ModelT()
        model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, self.opcodes, [graph], self.buffers
        model.description = description
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tflite_mesh_model(template: np.ndarray) -> bytes:
    """A TFLite face-landmarks model for the FaceLandmarker task: template + tiny input term.

    Built directly with the TFLite flatbuffer schema shipped in mediapipe, then
    given image metadata (NormalizationOptions mean 0, std 255) which the Tasks
    image preprocessing requires for float inputs.
    """
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    # isort: split
    from mediapipe.tasks.metadata import schema_py_generated as fb  # kept after metadata_writers, as first written

    g = _TfliteGraph()
    n = template.size
    image = g.tensor("input_1", (1, 256, 256, 3))
    axes = g.tensor("axes", (3,), np.array([1, 2, 3], np.int32), fb.TensorType.INT32)
    mean = g.tensor("mean", (1, 1, 1, 1))
    reducer = fb.ReducerOptionsT()
    reducer.keepDims = True
    g.op(fb.BuiltinOperator.MEAN, [image, axes], [mean], fb.BuiltinOptions.ReducerOptions, reducer)
    gain = g.tensor("gain", (1, 1, 1, n), np.full((1, 1, 1, n), 0.5, np.float32))
    scaled = g.tensor("scaled", (1, 1, 1, n))
    g.op(fb.BuiltinOperator.MUL, [mean, gain], [scaled], fb.BuiltinOptions.MulOptions, fb.MulOptionsT())
    tpl = g.tensor("template", (1, 1, 1, n), template.reshape(1, 1, 1, n).astype(np.float32))
    out_mesh = g.tensor("Identity", (1, 1, 1, n))
    g.op(fb.BuiltinOperator.ADD, [scaled, tpl], [out_mesh], fb.BuiltinOptions.AddOptions, fb.AddOptionsT())
    zero = g.tensor("zero", (1, 1, 1, 1), np.zeros((1, 1, 1, 1), np.float32))
    muted = g.tensor("muted", (1, 1, 1, 1))
    g.op(fb.BuiltinOperator.MUL, [mean, zero], [muted], fb.BuiltinOptions.MulOptions, fb.MulOptionsT())
    ten = g.tensor("ten", (1, 1, 1, 1), np.full((1, 1, 1, 1), 10.0, np.float32))
    out_flag = g.tensor("Identity_1", (1, 1, 1, 1))
    g.op(fb.BuiltinOperator.ADD, [muted, ten], [out_flag], fb.BuiltinOptions.AddOptions, fb.AddOptionsT())
    out_aux = g.tensor("Identity_2", (1, 1, 1, 1))
    g.op(fb.BuiltinOperator.SUB, [ten, muted], [out_aux], fb.BuiltinOptions.SubOptions, fb.SubOptionsT())
    raw = g.finish([image], [out_mesh, out_flag, out_aux], "ditto test stand-in face landmarks")

    writer = metadata_writer.MetadataWriter.create(bytearray(raw))
    writer.add_general_info("face_landmarks_detector", "test stand-in")
    writer.add_image_input(norm_mean=[0.0], norm_std=[255.0])
    for name in ("Identity", "Identity_1", "Identity_2"):
        writer.add_feature_output(name=name)
    content, _ = writer.populate()
    return bytes(content)


BLENDSHAPE_LANDMARKS = 146  # MediaPipe's face_blendshapes.tflite: (1, 146, 2) landmark subset in
NUM_BLENDSHAPES = 52  # → (52,) scores out


def _tflite_blendshapes_model(rng: np.random.Generator) -> bytes:
    """A face_blendshapes.tflite stand-in: (1, 146, 2) → reshape → seeded random FC → sigmoid → (52,).

    The shapes are the ones FaceLandmarker's blend-shape graph checks; the scores mean nothing.
    """
    from mediapipe.tasks.metadata import schema_py_generated as fb

    g = _TfliteGraph()
    k = BLENDSHAPE_LANDMARKS * 2
    points = g.tensor("input_points", (1, BLENDSHAPE_LANDMARKS, 2))
    flat_shape = g.tensor("flat_shape", (2,), np.array([1, k], np.int32), fb.TensorType.INT32)
    flat = g.tensor("flat", (1, k))
    reshape = fb.ReshapeOptionsT()
    reshape.newShape = [1, k]
    g.op(fb.BuiltinOperator.RESHAPE, [points, flat_shape], [flat], fb.BuiltinOptions.ReshapeOptions, reshape)
    weights = (rng.standard_normal((NUM_BLENDSHAPES, k)) * 1e-4).astype(np.float32)
    bias = (rng.standard_normal(NUM_BLENDSHAPES) * 0.5).astype(np.float32)
    w = g.tensor("weights", (NUM_BLENDSHAPES, k), weights)
    b = g.tensor("bias", (NUM_BLENDSHAPES,), bias)
    logits = g.tensor("logits", (1, NUM_BLENDSHAPES))
    g.op(
        fb.BuiltinOperator.FULLY_CONNECTED,
        [flat, w, b],
        [logits],
        fb.BuiltinOptions.FullyConnectedOptions,
        fb.FullyConnectedOptionsT(),
    )
    probs = g.tensor("probs", (1, NUM_BLENDSHAPES))
    g.op(fb.BuiltinOperator.LOGISTIC, [logits], [probs], fb.BuiltinOptions.NONE, None)
    out_shape = g.tensor("out_shape", (1,), np.array([NUM_BLENDSHAPES], np.int32), fb.TensorType.INT32)
    scores = g.tensor("output", (NUM_BLENDSHAPES,))
    reshape = fb.ReshapeOptionsT()
    reshape.newShape = [NUM_BLENDSHAPES]
    g.op(fb.BuiltinOperator.RESHAPE, [probs, out_shape], [scores], fb.BuiltinOptions.ReshapeOptions, reshape)
    return g.finish([points], [scores], "ditto test stand-in face blendshapes")


def _geometry_metadata(template: np.ndarray) -> bytes:
    """geometry_pipeline_metadata_landmarks.binarypb: a canonical mesh from the template's 468 face points.

    Vertices (x, y, z, u, v) in centimetre-like units (centred, y up), a strip of triangles over
    consecutive vertices and every vertex in the Procrustes basis with weight 1.
    """
    from mediapipe.tasks.cc.vision.face_geometry.proto import geometry_pipeline_metadata_pb2 as gp
    from mediapipe.tasks.cc.vision.face_geometry.proto import mesh_3d_pb2

    pts = template.reshape(-1, 3)[:CANONICAL_MESH_VERTICES].astype(np.float64)
    uv = (pts[:, :2] - pts[:, :2].min(0)) / np.ptp(pts[:, :2], axis=0)
    xyz = (pts - pts.mean(0)) * (15.0 / 256.0) * np.array([1.0, -1.0, -1.0])
    vertices = np.concatenate([xyz, uv], axis=1).astype(np.float32)
    triangles = [(i, i + 1, i + 2) for i in range(0, CANONICAL_MESH_VERTICES - 2, 2)]
    meta = gp.GeometryPipelineMetadata()
    meta.input_source = gp.InputSource.FACE_LANDMARK_PIPELINE
    meta.canonical_mesh.vertex_type = mesh_3d_pb2.Mesh3d.VERTEX_PT
    meta.canonical_mesh.primitive_type = mesh_3d_pb2.Mesh3d.TRIANGLE
    meta.canonical_mesh.vertex_buffer.extend(vertices.reshape(-1).tolist())
    meta.canonical_mesh.index_buffer.extend([i for tri in triangles for i in tri])
    for i in range(CANONICAL_MESH_VERTICES):
        meta.procrustes_landmark_basis.add(landmark_id=i, weight=1.0)
    return meta.SerializeToString(deterministic=True)


CANONICAL_MESH_VERTICES = 468  # the face mesh without the 10 iris points


def _write_task_bundle(path: Path, template: np.ndarray, seed: int = 0) -> bool:
    """face_landmarker.task: detector, landmarks, blend-shape model and geometry metadata (module docstring)."""
    try:
        import mediapipe
    except ImportError:
        logger.warning("mediapipe not installed: %s not written", path.name)
        return False
    detector = Path(mediapipe.__file__).parent / "modules" / "face_detection" / "face_detection_short_range.tflite"
    members = {
        "face_detector.tflite": detector.read_bytes(),
        "face_landmarks_detector.tflite": _tflite_mesh_model(template),
        "face_blendshapes.tflite": _tflite_blendshapes_model(np.random.default_rng([int(seed), 52])),
        "geometry_pipeline_metadata_landmarks.binarypb": _geometry_metadata(template),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: reproducible bytes
            bundle.writestr(info, data)
    path.write_bytes(buffer.getvalue())
    return True


def write_aux_test_models(onnx_dir: Path, pytorch_aux_dir: Path, *, seed: int, hubert: str = "large") -> None:
    """Write the stand-in auxiliary models (``hubert``: ``"large"`` or ``"small"``, module docstring).

    ``onnx_dir`` (the ``ditto_onnx`` layout) gets insightface_det, landmark106,
    landmark203, blaze_face, face_mesh, hubert (.onnx, Ditto tensor names);
    ``pytorch_aux_dir`` (``ditto_pytorch/aux_models``) gets det_10g.onnx,
    2d106det.onnx, landmark203.onnx, hubert_streaming_fix_kv.onnx (original
    tensor names) and face_landmarker.task. Same ``seed`` → identical bytes
    (for a given torch/onnx/mediapipe version).

    Raises:
        ValueError: ``hubert`` is not one of :data:`HUBERT_STAND_INS`.
    """
    if hubert not in HUBERT_STAND_INS:
        raise ValueError(f"hubert must be one of {HUBERT_STAND_INS}, got {hubert!r}")
    onnx_dir, pytorch_aux_dir = Path(onnx_dir), Path(pytorch_aux_dir)
    onnx_dir.mkdir(parents=True, exist_ok=True)
    pytorch_aux_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(int(seed))

    # SCRFD: Ditto names (static 512) and det_10g names.
    det = ScrfdStandIn()
    blob = torch.zeros(1, 3, 512, 512)
    _export(det, (blob,), onnx_dir / "insightface_det.onnx", ["image"], list(DITTO_OUTPUT_NAMES))
    _export(det, (blob,), pytorch_aux_dir / "det_10g.onnx", [DET10G_INPUT], list(DET10G_OUTPUTS))

    lmk106 = TemplateLandmarks(landmark106_template(), 1.0 / 255.0, 0.01, gen)
    crop192 = torch.zeros(1, 3, 192, 192)
    _export(lmk106, (crop192,), onnx_dir / "landmark106.onnx", ["data"], ["fc1"])
    _export(lmk106, (crop192,), pytorch_aux_dir / "2d106det.onnx", ["data"], ["fc1"])

    lmk203 = TemplateLandmarks(landmark203_template(), 1.0, 0.005, gen)
    crop224 = torch.zeros(1, 3, 224, 224)
    _export(lmk203, (crop224,), onnx_dir / "landmark203.onnx", ["input"], ["landmarks"])
    _export(
        Landmark203Ori(lmk203), (crop224,), pytorch_aux_dir / "landmark203.onnx", ["input"], list(LMK203_ORI_OUTPUTS)
    )

    blaze = BlazeStandIn(blaze_anchors(), gen)
    _export(
        blaze, (torch.zeros(1, 128, 128, 3),), onnx_dir / "blaze_face.onnx", ["input"], ["regressors", "classificators"]
    )

    template = mesh_template()
    mesh = MeshStandIn(template, gen)
    _export(
        mesh,
        (torch.zeros(1, 256, 256, 3),),
        onnx_dir / "face_mesh.onnx",
        ["input"],
        ["Identity", "Identity_1", "Identity_2"],
    )

    if hubert == "large":
        export_hubert_onnx(build_hubert_large_stand_in(seed), onnx_dir / "hubert.onnx", opset_version=OPSET)
        _link_or_copy(onnx_dir / "hubert.onnx", pytorch_aux_dir / "hubert_streaming_fix_kv.onnx")
    else:
        audio = torch.zeros(1, 6480)
        axes = {"input_values": {1: "num_samples"}, "encoding_out": {0: "num_frames"}}
        small_hubert = HubertStandIn(gen)
        for path in (onnx_dir / "hubert.onnx", pytorch_aux_dir / "hubert_streaming_fix_kv.onnx"):
            _export(small_hubert, (audio,), path, ["input_values"], ["encoding_out"], axes)

    _write_task_bundle(pytorch_aux_dir / "face_landmarker.task", template, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_dir", type=Path)
    parser.add_argument("pytorch_aux_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hubert",
        choices=HUBERT_STAND_INS,
        default="large",
        help="HuBERT stand-in: the real architecture (1.26 GB) or a tiny conv (default large)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    write_aux_test_models(args.onnx_dir, args.pytorch_aux_dir, seed=args.seed, hubert=args.hubert)


if __name__ == "__main__":
    main()
