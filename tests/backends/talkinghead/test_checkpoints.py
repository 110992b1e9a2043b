"""The generated test checkpoint tree: layout, official file formats, PyTorch/ONNX twins, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from ditto.backends.talkinghead.config import load_cfg, onnx_model_name, read_cfg_dict
from ditto.backends.talkinghead.models import ONNX_INPUT_SHAPES, RENDERER_MODELS, make_example_inputs
from ditto.backends.talkinghead.models.lmdm import MotionDecoder
from ditto.backends.talkinghead.runtime.loader import load_runner
from ditto.backends.talkinghead.runtime.onnx_runner import OnnxRunner
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner
from ditto.tools import make_test_checkpoints as mtc
from ditto.tools import onnx_cfg

EXPECTED_FILES = {
    "ditto_cfg": {
        "v0.4_hubert_cfg_pytorch.pkl",
        "v0.4_hubert_cfg_trt.pkl",
        "v0.4_hubert_cfg_trt_online.pkl",
        "v0.4_hubert_cfg_onnx.pkl",
        "v0.4_hubert_cfg_onnx_online.pkl",
    },
    "ditto_pytorch/models": {f"{name}.pth" for name in mtc.NETWORK_NAMES},
    "ditto_pytorch/aux_models": {
        "det_10g.onnx",
        "2d106det.onnx",
        "landmark203.onnx",
        "hubert_streaming_fix_kv.onnx",
        "face_landmarker.task",
    },
    "ditto_onnx": {f"{name}.onnx" for name in mtc.NETWORK_NAMES}
    | {
        "insightface_det.onnx",
        "landmark106.onnx",
        "landmark203.onnx",
        "blaze_face.onnx",
        "face_mesh.onnx",
        "hubert.onnx",
    },
}


def state_dict_digest(obj) -> str:
    """SHA-256 over a (possibly wrapped) state dict's names, shapes and bytes."""
    if len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))
    digest = hashlib.sha256()
    for key in sorted(obj):
        tensor = obj[key].detach().cpu().contiguous()
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def load_checkpoint(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def fresh_module(name: str) -> torch.nn.Module:
    return MotionDecoder() if name == mtc.LMDM_NAME else RENDERER_MODELS[name]()


def test_tree_layout_and_file_names(checkpoint_tree) -> None:
    for folder, names in EXPECTED_FILES.items():
        found = {p.name for p in (checkpoint_tree.root / folder).iterdir() if p.is_file()}
        assert found == names, folder
    assert {p.name for p in checkpoint_tree.root.iterdir()} == {"ditto_cfg", "ditto_pytorch", "ditto_onnx"}


@pytest.mark.parametrize("name", mtc.NETWORK_NAMES)
def test_every_pth_loads_strictly_into_a_fresh_module(checkpoint_tree, name) -> None:
    obj = load_checkpoint(checkpoint_tree.pytorch / "models" / f"{name}.pth")
    wrapper = mtc.CHECKPOINT_WRAPPER[name]
    if wrapper is not None:
        assert list(obj) == [wrapper]  # {'retarget_shoulder': sd} / {'model_state_dict': sd}, as shipped
        obj = obj[wrapper]
    fresh_module(name).load_state_dict(obj, strict=True)


def _twin_inputs(name: str, batch: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    if name != mtc.LMDM_NAME:
        shapes = {k: (batch, *shape[1:]) for k, shape in ONNX_INPUT_SHAPES[name].items()}
        return make_example_inputs(name, shapes, generator=gen)
    return {
        "x": torch.randn(batch, 80, 265, generator=gen),
        "cond_frame": torch.randn(batch, 265, generator=gen) * 0.1,
        "cond": torch.randn(batch, 80, 1103, generator=gen),
        "time_cond": torch.tensor([499, 99][:batch]),
    }


def _twin_runners(tree: mtc.CheckpointTree, name: str) -> tuple[TorchRunner, OnnxRunner]:
    kind = "lmdm" if name == mtc.LMDM_NAME else name
    torch_runner = load_runner(
        kind,
        tree.pytorch / "models" / f"{name}.pth",
        module_factory=None if kind == "lmdm" else (lambda _sd: fresh_module(name)),
    )
    assert isinstance(torch_runner, TorchRunner)
    return torch_runner, OnnxRunner(tree.onnx / f"{name}.onnx")


@pytest.mark.parametrize("name", mtc.NETWORK_NAMES)
def test_pytorch_and_onnx_twins_agree(checkpoint_tree, name) -> None:
    torch_runner, onnx_runner = _twin_runners(checkpoint_tree, name)
    assert onnx_runner.input_names == torch_runner.input_names
    assert onnx_runner.output_names == torch_runner.output_names
    inputs = _twin_inputs(name)
    expected, got = torch_runner(**inputs), onnx_runner(**inputs)
    for key, ref in expected.items():
        assert torch.isfinite(ref).all(), key
        tolerance = 1e-4 + 1e-3 * float(ref.abs().max())  # scaled to the output's magnitude
        torch.testing.assert_close(got[key], ref, rtol=0, atol=tolerance, msg=f"{name}.{key}")


@pytest.mark.parametrize("name", ["stitch_network", "warp_network", mtc.LMDM_NAME])
def test_batched_twins_take_a_batch_in_one_run(checkpoint_tree, name) -> None:
    """The twins of the batched networks (dynamic axis 0) agree with PyTorch on a batch of 2 rows.
    (The decoder's twin is batched the same way; its CPU run is left to the agreement test above.)"""
    torch_runner, onnx_runner = _twin_runners(checkpoint_tree, name)
    assert onnx_runner.max_batch is None and torch_runner.max_batch is None
    inputs = _twin_inputs(name, batch=2)
    expected, got = torch_runner(**inputs), onnx_runner(**inputs)
    for key, ref in expected.items():
        assert got[key].shape == ref.shape and ref.shape[0] == 2, key
        tolerance = 1e-4 + 1e-3 * float(ref.abs().max())
        torch.testing.assert_close(got[key], ref, rtol=0, atol=tolerance, msg=f"{name}.{key}")


def test_fixed_batch_twins_run_row_by_row(checkpoint_tree) -> None:
    """HuBERT's graph has no batch axis: a batch of windows is one run per window, outputs one after another."""
    hubert = OnnxRunner(checkpoint_tree.onnx / "hubert.onnx")
    assert hubert.max_batch == 1
    windows = torch.randn(2, 6480, generator=torch.Generator().manual_seed(2)) * 0.1
    out = hubert(input_values=windows)["encoding_out"]
    first, second = (hubert(input_values=windows[i : i + 1])["encoding_out"] for i in range(2))
    assert first.shape == (20, 1024) and out.shape == (40, 1024)
    assert torch.equal(out, torch.cat([first, second]))
    assert OnnxRunner(checkpoint_tree.onnx / "appearance_extractor.onnx").max_batch == 1


def test_cli_is_deterministic_per_seed(checkpoint_tree, tmp_path, capsys) -> None:
    """``--skip_onnx`` regenerates the same tensors for the same seed; another seed differs."""
    assert mtc.main([str(tmp_path), "--seed", "0", "--skip_onnx", "--hubert", "small"]) == 0
    printed = capsys.readouterr().out
    assert "total in" in printed and "streaming_server.py" in printed
    assert not any(tmp_path.joinpath("ditto_onnx").glob("decoder.onnx"))  # skipped
    for name in mtc.NETWORK_NAMES:
        relative = Path("ditto_pytorch/models") / f"{name}.pth"
        assert state_dict_digest(load_checkpoint(tmp_path / relative)) == state_dict_digest(
            load_checkpoint(checkpoint_tree.root / relative)
        ), name
    other = mtc.checkpoint_object("stitch_network", mtc.build_test_module("stitch_network", 1))
    assert state_dict_digest(other) != state_dict_digest(
        load_checkpoint(checkpoint_tree.pytorch / "models" / "stitch_network.pth")
    )


def test_heads_are_rescaled_to_plausible_ranges() -> None:
    """Motion extractor on a mid-grey crop: scale ≈ 1.5, pose ≈ 0°, small exp/t; LMDM and stitching small."""
    from ditto.backends.talkinghead.pipeline.motion_stitch import pose_to_degrees

    with torch.inference_mode():
        motion = mtc.build_test_module("motion_extractor", 0)(torch.full((1, 3, 256, 256), 0.5))
        assert abs(float(motion["scale"]) - 1.5) < 0.1
        for key in ("pitch", "yaw", "roll"):
            assert abs(float(pose_to_degrees(motion[key]))) < 10
        assert float(motion["exp"].abs().max()) < 0.2 and float(motion["t"].abs().max()) < 0.2
        assert 0.1 < float(motion["kp"].std()) < 0.5
        stitch = mtc.build_test_module("stitch_network", 0)
        kp = torch.randn(1, 21, 3) * 0.3
        assert float((stitch(kp, kp) - kp).abs().max()) < 0.1


@pytest.mark.parametrize(
    "flavor,root,engines",
    [
        ("pytorch", "pytorch", {"torch", "ori"}),
        ("onnx", "onnx", {"onnx"}),
        ("onnx_online", "onnx", {"onnx"}),
    ],
)
def test_cfg_pkls_resolve_against_their_folder(checkpoint_tree, flavor, root, engines) -> None:
    cfg = load_cfg(checkpoint_tree.cfg_pkl(flavor), getattr(checkpoint_tree, root))  # every file must exist
    assert {m.engine for m in cfg.model_cfgs().values()} == engines
    assert cfg.setup_options().online_mode == flavor.endswith("online")


def test_onnx_cfg_keeps_setup_options_and_renames_engines(checkpoint_tree, tmp_path) -> None:
    assert onnx_model_name("lmdm_v0.4_hubert_fp32.engine") == "lmdm_v0.4_hubert.onnx"
    assert onnx_model_name("sub/decoder_fp16.engine") == "sub/decoder.onnx"
    assert onnx_model_name("aux_models/det_10g.onnx") == "aux_models/det_10g.onnx"
    out = tmp_path / "onnx_online.pkl"
    assert onnx_cfg.main([str(checkpoint_tree.cfg_pkl("trt_online")), str(out)]) == 0
    converted, original = read_cfg_dict(out), read_cfg_dict(checkpoint_tree.cfg_pkl("trt_online"))
    assert converted["base_cfg"]["landmark478_cfg"]["face_mesh_model_path"] == "face_mesh.onnx"
    assert converted["audio2motion_cfg"]["model_path"] == "lmdm_v0.4_hubert.onnx"
    assert (converted["default_kwargs"]["emo"] == original["default_kwargs"]["emo"]).all()
    assert onnx_cfg.main([str(tmp_path / "missing.pkl"), str(out)]) == 1
