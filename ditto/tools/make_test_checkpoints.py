"""A complete Ditto checkpoint tree with random weights, for tests and CPU smoke runs.

``python -m ditto.tools.make_test_checkpoints OUT_DIR [--seed N] [--skip_onnx] [--hubert large|small]`` writes::

    OUT_DIR/
      ditto_pytorch/models/       appearance_extractor.pth  motion_extractor.pth  warp_network.pth
                                  decoder.pth  stitch_network.pth  lmdm_v0.4_hubert.pth
      ditto_pytorch/aux_models/   det_10g.onnx  2d106det.onnx  landmark203.onnx
                                  hubert_streaming_fix_kv.onnx  face_landmarker.task
      ditto_onnx/                 the same six networks as .onnx (exported from the SAME modules;
                                  stitch, warp, decoder and LMDM with a dynamic batch axis)
                                  + insightface_det, landmark106, landmark203, blaze_face,
                                  face_mesh, hubert (.onnx stand-ins)
      ditto_cfg/                  v0.4_hubert_cfg_{pytorch,trt,trt_online}.pkl (official names)
                                  v0.4_hubert_cfg_onnx{,_online}.pkl (ours: trt pkls pointed at ditto_onnx)

File formats follow the official checkpoints (docs/pipeline.md §2, §4.2): plain state
dicts, except ``stitch_network.pth`` = ``{'retarget_shoulder': sd}`` and
``lmdm_v0.4_hubert.pth`` = ``{'model_state_dict': sd}``. Every ``.pth`` loads
strictly into the default-constructed module, so the whole loader, registration and
streaming code runs exactly as with the real weights, only slowly on a CPU.

Random weights are seeded per model (from ``--seed`` and the model name), so a
seed always gives the same tensors. Default initialisation would drive the
pipeline far outside the ranges the real networks produce (the motion extractor's
scale comes out near −1, the LMDM predicts motion deltas of ±2 where real ones are
±0.05, the stitching MLP moves keypoints by a third of the face), so the output
heads are rescaled — see :data:`HEAD_INIT` — to keep every stage finite and
plausible: scale ≈ 1.5, pose ≈ 0° ± a few degrees, canonical keypoints a fixed
cloud of std ≈ 0.25 with small image dependence, expression and translation
offsets of a few hundredths, LMDM motion of a few hundredths, stitching
corrections of about 0.01. The auxiliary models are the stand-ins of
:mod:`ditto.tools.aux_test_models` (a face on textured images, none on flat ones).

The official ONNX files are fixed at batch 1. The twins of the networks a device
engine batches across sessions (stitch_network, warp_network, decoder, LMDM:
``trt_bindings.BATCH_AXIS_MODELS``) declare a dynamic leading axis instead, same
tensor names, so ``build_engines`` gives them a batch profile; the others keep batch 1.

``--skip_onnx`` leaves out the six network exports (~30 s on a CPU) and the ONNX
pkls; ``ditto_onnx/`` then holds only the aux stand-ins.

``--hubert large`` (the default) makes the HuBERT files the real HuBERT-large
architecture with random weights (1.26 GB, ~25 s to export on two CPU cores; the
``ditto_pytorch/aux_models`` copy is a hard link where possible), so benchmarks pay
what the official model costs. ``--hubert small`` writes the 170 KB conv stand-in
instead; the test suite uses it (the large one adds ~0.25 s of onnxruntime per
HuBERT window on a CPU and 1.3 GB of disk).

Not imported by the runtime.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ditto.backends.talkinghead.config import CFG_PKL_NAMES, dump_cfg_pkl, onnx_cfg_dict, read_cfg_dict
from ditto.backends.talkinghead.models import RENDERER_MODELS, export_onnx
from ditto.backends.talkinghead.models.lmdm import MotionDecoder
from ditto.backends.talkinghead.runtime.trt_bindings import BATCH_AXIS_MODELS, model_for_file
from ditto.tools.aux_test_models import HUBERT_STAND_INS, write_aux_test_models
from ditto.tools.cfg_writers import ONNX_CFG_PKL_NAMES, write_cfg_pkl
from ditto.tools.onnx_export import export_lmdm_onnx

logger = logging.getLogger(__name__)

LMDM_NAME = "lmdm_v0.4_hubert"
#: Network name → how its ``.pth`` wraps the state dict (None: the file is the state dict).
CHECKPOINT_WRAPPER: Mapping[str, str | None] = {
    "appearance_extractor": None,
    "motion_extractor": None,
    "warp_network": None,
    "decoder": None,
    "stitch_network": "retarget_shoulder",
    LMDM_NAME: "model_state_dict",
}
NETWORK_NAMES: tuple[str, ...] = tuple(CHECKPOINT_WRAPPER)


@dataclass(frozen=True, slots=True)
class HeadInit:
    """Rescaling of one output layer after default init: ``weight *= weight_gain``, then the bias."""

    weight_gain: float
    bias: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (default bias, generator) -> new bias


def _zeros(bias: torch.Tensor, _gen: torch.Generator) -> torch.Tensor:
    return torch.zeros_like(bias)


def _centred_pose_logits(bias: torch.Tensor, _gen: torch.Generator) -> torch.Tensor:
    """66 bin logits peaked on the two centre bins (32, 33 → 0°), like a frontal face."""
    logits = torch.zeros_like(bias)
    logits[32:34] = 4.0
    return logits


def _scale_bias(bias: torch.Tensor, _gen: torch.Generator) -> torch.Tensor:
    return torch.full_like(bias, 1.5)


def _keypoint_cloud(bias: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(bias.shape, generator=gen) * 0.25


def _small(scale: float) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    def bias(b: torch.Tensor, _gen: torch.Generator) -> torch.Tensor:
        return b * scale

    return bias


#: (network, output layer) → rescaling; see the module docstring for the target ranges.
HEAD_INIT: Mapping[tuple[str, str], HeadInit] = {
    ("motion_extractor", "detector.fc_scale"): HeadInit(0.01, _scale_bias),
    ("motion_extractor", "detector.fc_kp"): HeadInit(0.1, _keypoint_cloud),
    ("motion_extractor", "detector.fc_exp"): HeadInit(0.02, _zeros),
    ("motion_extractor", "detector.fc_t"): HeadInit(0.05, _zeros),
    ("motion_extractor", "detector.fc_pitch"): HeadInit(0.1, _centred_pose_logits),
    ("motion_extractor", "detector.fc_yaw"): HeadInit(0.1, _centred_pose_logits),
    ("motion_extractor", "detector.fc_roll"): HeadInit(0.1, _centred_pose_logits),
    ("stitch_network", "mlp.6"): HeadInit(0.05, _small(0.05)),
    (LMDM_NAME, "final_layer"): HeadInit(0.02, _zeros),
}


def model_seed(seed: int, name: str) -> int:
    """The torch seed of one network: stable across runs and Python versions."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def build_test_module(name: str, seed: int) -> nn.Module:
    """One network with seeded random weights and rescaled heads, in eval mode on the CPU.

    Uses a private RNG state (the caller's global torch RNG is left untouched).
    """
    cls: Callable[[], nn.Module] = MotionDecoder if name == LMDM_NAME else RENDERER_MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed(seed, name))
        module = cls()
    gen = torch.Generator().manual_seed(model_seed(seed, name + "/heads"))
    with torch.no_grad():
        for (network, layer), init in HEAD_INIT.items():
            if network != name:
                continue
            linear = module.get_submodule(layer)
            linear.get_parameter("weight").mul_(init.weight_gain)
            bias = linear.get_parameter("bias")
            bias.copy_(init.bias(bias, gen))
    return module.eval()


def checkpoint_object(name: str, module: nn.Module) -> object:
    """What ``torch.save`` writes for ``name``: the state dict, wrapped as the official file is."""
    state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    wrapper = CHECKPOINT_WRAPPER[name]
    return state if wrapper is None else {wrapper: state}


@dataclass(frozen=True, slots=True)
class CheckpointTree:
    """Paths of a written tree."""

    root: Path
    pytorch: Path  # data_root of the PyTorch flavour
    onnx: Path  # data_root of the ONNX flavour
    cfg: Path  # folder of the cfg pkls

    def cfg_pkl(self, flavor: str) -> Path:
        """``pytorch`` / ``trt`` / ``trt_online`` (official names) or ``onnx`` / ``onnx_online``."""
        names: dict[str, str] = dict(CFG_PKL_NAMES.items())
        names.update(ONNX_CFG_PKL_NAMES)
        return self.cfg / names[flavor]

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> CheckpointTree:
        root = Path(root)
        return cls(root=root, pytorch=root / "ditto_pytorch", onnx=root / "ditto_onnx", cfg=root / "ditto_cfg")


def _export_onnx(name: str, module: nn.Module, path: Path) -> None:
    """The ONNX twin of one network; the batched ones (:data:`BATCH_AXIS_MODELS`) with a dynamic batch axis."""
    dynamic_batch = model_for_file(path) in BATCH_AXIS_MODELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        if name == LMDM_NAME:
            export_lmdm_onnx(module, path, dynamic_batch=dynamic_batch)  # type: ignore[arg-type]
        else:
            export_onnx(name, module, path, dynamic_batch=dynamic_batch)


def write_onnx_cfg_pkls(tree: CheckpointTree) -> list[Path]:
    """The ONNX pkls: each trt pkl of the tree with its engine names pointed at ``ditto_onnx``."""
    written = []
    for trt_flavor, onnx_flavor in (("trt", "onnx"), ("trt_online", "onnx_online")):
        cfg = onnx_cfg_dict(read_cfg_dict(tree.cfg_pkl(trt_flavor)))
        written.append(dump_cfg_pkl(tree.cfg_pkl(onnx_flavor), cfg))
    return written


def write_test_checkpoints(
    out_dir: str | os.PathLike[str], *, seed: int = 0, skip_onnx: bool = False, hubert: str = "large"
) -> CheckpointTree:
    """Write the whole tree (see the module docstring) and return its paths.

    ``hubert``: ``"large"`` (the real architecture) or ``"small"`` (a tiny conv stand-in).

    Deterministic: the same ``seed`` gives the same tensors (file bytes may
    differ between torch/onnx versions).
    """
    tree = CheckpointTree.at(out_dir)
    models_dir = tree.pytorch / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    tree.onnx.mkdir(parents=True, exist_ok=True)
    for name in NETWORK_NAMES:
        module = build_test_module(name, seed)
        torch.save(checkpoint_object(name, module), models_dir / f"{name}.pth")
        if not skip_onnx:
            _export_onnx(name, module, tree.onnx / f"{name}.onnx")
        logger.info("wrote %s", name)
    write_aux_test_models(tree.onnx, tree.pytorch / "aux_models", seed=seed, hubert=hubert)
    for flavor in CFG_PKL_NAMES:
        write_cfg_pkl(tree.cfg, flavor, seed=seed)
    if not skip_onnx:
        write_onnx_cfg_pkls(tree)
    return tree


def summary(tree: CheckpointTree) -> str:
    """One line per file (size, path relative to the root) and a total (hard links counted once)."""
    lines, total, seen = [], 0, set()
    for path in sorted(p for p in tree.root.rglob("*") if p.is_file()):
        stat = path.stat()
        if (stat.st_dev, stat.st_ino) not in seen:  # a hard link (the large HuBERT) counts once
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
        lines.append(f"{stat.st_size / 1e6:9.2f} MB  {path.relative_to(tree.root)}")
    lines.append(f"{total / 1e6:9.2f} MB  total in {tree.root}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to create the tree in")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument("--skip_onnx", action="store_true", help="no ONNX exports of the six networks (fast)")
    parser.add_argument(
        "--hubert",
        choices=HUBERT_STAND_INS,
        default="large",
        help="HuBERT files: the real HuBERT-large architecture, 1.26 GB (default; use it for "
        "benchmarks), or a tiny conv stand-in (fast tests)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tree = write_test_checkpoints(args.out_dir, seed=args.seed, skip_onnx=args.skip_onnx, hubert=args.hubert)
    print(summary(tree))
    print(f"serve it: python streaming_server.py --data_root {tree.pytorch} --cfg_pkl {tree.cfg_pkl('pytorch')}")
    if not args.skip_onnx:
        print(f"      or: python streaming_server.py --data_root {tree.onnx} --cfg_pkl {tree.cfg_pkl('onnx_online')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
