"""Fixtures for the Ditto backend tests.

* ``checkpoint_tree``: ONE generated checkpoint tree per test session (random weights in
  the official layout, ~35 s and 1.5 GB under pytest's tmp dir).
* ``pytorch_backend``: the backend built by ``from_settings`` on that tree's PyTorch
  flavour (CPU), shared by the session; ``avatar`` is the example portrait registered once.
* ``online_backend``: the ONNX flavour's online pkl (overlap_v2 75) with the same stand-ins.
* ``fast_backend``: the same loaded models, except that warp and decoder are replaced by
  :class:`CheapWarp` / :class:`CheapDecoder`. The real renderer costs ~1.2 TFLOP
  (≈10-20 s on two CPU cores) per frame, so tests that need many frames use these
  stand-ins; the real renderer runs in the end-to-end server session and the
  PyTorch/ONNX twin checks. ``sampling_timesteps`` is lowered to 5 there too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ditto import SAMPLE_RATE_HZ
from ditto.backends.talkinghead.backend import DittoBackend
from ditto.backends.talkinghead.config import load_cfg
from ditto.backends.talkinghead.loading import DittoModels
from ditto.backends.talkinghead.runtime.loader import MODEL_IO
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner
from ditto.settings import Settings
from ditto.tools.make_test_checkpoints import CheckpointTree, write_test_checkpoints

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_IMAGE = ROOT / "example" / "image.png"
FAST_SETUP = {"sampling_timesteps": 5}  # DDIM steps per LMDM window in behaviour tests (pkl: 50)


class CheapWarp(nn.Module):
    """Warp-network stand-in: the first 256 of the 512 flattened f_s channels, shifted by a
    fixed random projection of (x_d − x_s), so frames follow the driven keypoints."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("mix", torch.randn(256, 63, generator=gen) * 20)

    def forward(self, feature_3d: Tensor, kp_source: Tensor, kp_driving: Tensor) -> Tensor:
        base = feature_3d.reshape(-1, 512, 64, 64)[:, :256]
        motion = (kp_driving - kp_source).reshape(-1, 63) @ self.mix.t()
        return base + motion.reshape(-1, 256, 1, 1)


class CheapDecoder(nn.Module):
    """Decoder stand-in: sigmoid of three channels, nearest-upsampled to 512×512."""

    def forward(self, feature: Tensor) -> Tensor:
        rgb = torch.sigmoid(feature[:, :3] * 4)
        return nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")


class RecordingRunner:
    """Wraps a runner and keeps a copy of every call's inputs (for asserting on keypoints)."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.input_names = runner.input_names
        self.output_names = runner.output_names
        self.device = runner.device
        self.max_batch = runner.max_batch
        self.calls: list[dict[str, Tensor]] = []

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        self.calls.append({k: v.detach().clone() for k, v in inputs.items()})
        return self.runner(**inputs)

    def rows(self, name: str) -> Tensor:
        """Every call's ``name`` input, batch rows concatenated in call order (one row per frame)."""
        return torch.cat([call[name] for call in self.calls])


def torch_runner(kind: str, module: nn.Module) -> TorchRunner:
    io = MODEL_IO[kind]
    return TorchRunner(module, io.input_names, io.output_names)


def cheap_renderer_models(models):
    """``models`` with the stand-in warp and decoder."""
    return dataclasses.replace(
        models, warp=torch_runner("warp_network", CheapWarp()), decoder=torch_runner("decoder", CheapDecoder())
    )


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonics (float32, 16 kHz): audio the HuBERT stand-in reacts to."""
    t = np.arange(int(round(seconds * SAMPLE_RATE_HZ))) / SAMPLE_RATE_HZ
    rng = np.random.default_rng(seed)
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((140, 280, 700, 1200), 1))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * wave * envelope).astype(np.float32)


def render_all(stream, audio: np.ndarray, chunk: int = 1000) -> tuple[list, list]:
    """Feed ``audio`` in chunks, then finish; returns (frames yielded by feed, frames yielded by finish)."""
    during = []
    for start in range(0, len(audio), chunk):
        during.extend(stream.feed(audio[start : start + chunk]))
    after = list(stream.finish())
    stream.close()
    return during, after


@pytest.fixture(scope="session")
def checkpoint_tree(tmp_path_factory) -> CheckpointTree:
    # The small HuBERT stand-in: the real architecture (the CLI default) adds ~20 s of export,
    # 1.3 GB and ~0.2 s of CPU per HuBERT window; test_hubert_large.py covers it.
    return write_test_checkpoints(tmp_path_factory.mktemp("ditto_checkpoints"), seed=0, hubert="small")


@pytest.fixture(scope="session")
def portrait() -> np.ndarray:
    """The example portrait at 512×512 (registration cost does not depend on much else)."""
    image = cv2.cvtColor(cv2.imread(str(EXAMPLE_IMAGE)), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(cv2.resize(image, (512, 512), interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="session")
def pytorch_settings(checkpoint_tree) -> Settings:
    return Settings(data_root=checkpoint_tree.pytorch, cfg_pkl=checkpoint_tree.cfg_pkl("pytorch"), device="cpu")


@pytest.fixture(scope="session")
def pytorch_backend(pytorch_settings) -> Iterator[DittoBackend]:
    backend = DittoBackend.from_settings(pytorch_settings)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def avatar(pytorch_backend, portrait):
    return pytorch_backend.register_source(portrait)


@pytest.fixture(scope="session")
def fast_backend(pytorch_backend) -> DittoBackend:
    return DittoBackend(
        pytorch_backend.cfg, "cpu", models=cheap_renderer_models(pytorch_backend.models), setup_options=FAST_SETUP
    )


@pytest.fixture(scope="session")
def online_backend(checkpoint_tree) -> DittoBackend:
    """The trt_online pkl pointed at ditto_onnx, with overlap_v2 75 (instead of 70) through
    load_cfg's replace mechanism: 5 new frames per LMDM window keeps the clips short."""
    cfg = load_cfg(
        checkpoint_tree.cfg_pkl("onnx_online"), checkpoint_tree.onnx, replace_cfg={"default_kwargs": {"overlap_v2": 75}}
    )
    models = cheap_renderer_models(DittoModels.load(cfg, "cpu"))
    return DittoBackend(cfg, "cpu", models=models, setup_options=FAST_SETUP)
