"""Renderer modules: checkpoint layout, strict round trip, shapes, ONNX export, spectral norm, stitching.

CPU only. Full-size output shapes are checked on the ``meta`` device (no compute); real forwards of
the two big networks use reduced spatial sizes (both are fully convolutional over H and W). The
official-size ONNX checks of warp and decoder are marked ``slow`` and run only with ``-m slow``.
Golden values were produced by the official implementation (see ``GOLDEN``).
"""

from __future__ import annotations

import hashlib
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from ditto.backends.talkinghead.models import (
    ONNX_INPUT_SHAPES,
    ONNX_IO,
    ONNX_OUTPUT_SHAPES,
    RENDERER_MODELS,
    export_onnx,
    make_example_inputs,
)
from ditto.backends.talkinghead.models.blocks import SpectralNormConv2d, gaussian_heatmaps, identity_grid_3d
from ditto.backends.talkinghead.models.motion_extractor import MOTION_OUTPUT_NAMES

NAMES = list(RENDERER_MODELS)

# Binding names of the official ONNX models / TensorRT engines (docs/pipeline.md §4.1).
OFFICIAL_ONNX_IO = {
    "appearance_extractor": (("image",), ("pred",)),
    "motion_extractor": (("image",), ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")),
    "warp_network": (("feature_3d", "kp_source", "kp_driving"), ("out",)),
    "decoder": (("feature",), ("output",)),
    "stitch_network": (("kp_source", "kp_driving"), ("out",)),
}

# (key count, exact parameter count, parameter count as rounded in docs/pipeline.md §4.2 [M]).
LAYOUT = {
    "appearance_extractor": (107, 836_224, 0.84),
    "motion_extractor": (212, 28_118_728, 28.1),
    "warp_network": (97, 45_529_829, 45.5),
    "decoder": (182, 55_365_388, 55.4),
    "stitch_network": (8, 45_249, 0.045),
}

# sha256 over sorted "key:shape:dtype" lines of the state dict, obtained by instantiating the
# official ditto-talkinghead modules (commit e9191cf, core/models/modules) with their default ctor.
OFFICIAL_FINGERPRINT = {
    "appearance_extractor": "c512d62b82423448365cbcd04c5a2940be31aeaea034ecf501ad78a63192fbb4",
    "motion_extractor": "495fe6afd5437e6b1be983e255fadfe1bdded74f74bd98c6bc15aa246b64fa0c",
    "warp_network": "cdf818d7a2a2005580b60beebd25620042a83186fb5542e8aa75d37c17b59ab4",
    "decoder": "92425dc85147a174e711fb9d059d26eea57a7188426bbe2be6e00a84c1cc4301",
    "stitch_network": "179b8dbfedf19b75a852894b6e2772fe150c5d97ce2a358cee1cd79f983ff5f8",
}

# Key shapes listed in docs/pipeline.md §4.2.
KEY_SHAPES = {
    "appearance_extractor": {"first.conv.weight": (64, 3, 3, 3)},
    "motion_extractor": {"detector.downsample_layers.0.0.weight": (96, 3, 4, 4)},
    "warp_network": {
        "dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight": (64, 110, 3, 3, 3),
        "dense_motion_network.mask.weight": (22, 142, 7, 7, 7),
        "dense_motion_network.occlusion.weight": (1, 2272, 7, 7),
    },
    "decoder": {
        "fc.weight": (512, 256, 3, 3),
        "conv_img.0.weight": (12, 64, 3, 3),
        "G_middle_0.conv_0.weight_orig": (512, 512, 3, 3),
        "G_middle_0.conv_0.weight_u": (512,),
        "G_middle_0.conv_0.weight_v": (4608,),
        "up_0.conv_s.weight_orig": (256, 512, 1, 1),
    },
    "stitch_network": {
        "mlp.0.weight": (128, 126),
        "mlp.2.weight": (128, 128),
        "mlp.4.weight": (64, 128),
        "mlp.6.weight": (65, 64),
    },
}

# Golden outputs of the OFFICIAL modules (ditto-talkinghead e9191cf, core/models/modules), loaded with
# ``deterministic_state_dict`` and run in fp32 on CPU on ``golden_inputs``: (mean, std, values at
# GOLDEN_INDICES of the flattened output; motion outputs concatenated in ONNX order).
GOLDEN_INDICES = [0, 1, 7, 100, 1000, 4321, 9999, 65535]
GOLDEN = {
    "appearance_extractor": (
        0.0330663,
        0.8856043,
        [0.6270362, 0.6427016, 0.4831444, 0.1498826, -0.1877704, 0.490383, 0.7955596, 0.0689375],
    ),
    "motion_extractor": (
        -0.0462116,
        0.9983253,
        [-0.7927203, 0.417021, 0.7324392, 1.1812185, -1.0692751, -0.0487878, -0.5122385, 0.3166218],
    ),
    "warp_network": (
        -0.014171,
        0.2300176,
        [0.1437908, 0.2498501, 0.213496, 0.2785122, 0.1449396, -0.0954479, 0.1767517, 0.1629306],
    ),
    "decoder": (
        0.5185215,
        0.1514007,
        [0.5417569, 0.4901799, 0.3778621, 0.2993407, 0.455911, 0.4305051, 0.4479029, 0.4702725],
    ),
    "stitch_network": (
        0.0502434,
        0.335048,
        [0.2094564, -0.6581898, -0.231396, -0.0390121, -0.3060207, -0.0390121, -0.0390578, 0.585624],
    ),
}

# Reduced spatial sizes for real CPU forwards of the heavy networks (depth 16 must stay: the
# occlusion conv's input width is 142·16).
SMALL_INPUTS = {
    "appearance_extractor": {"image": (1, 3, 64, 64)},
    "motion_extractor": {"image": (1, 3, 64, 64)},
    "warp_network": {"feature_3d": (1, 32, 16, 32, 32), "kp_source": (1, 21, 3), "kp_driving": (1, 21, 3)},
    "decoder": {"feature": (1, 256, 16, 16)},
    "stitch_network": None,
}


def deterministic_state_dict(model: nn.Module, seed: int = 1234) -> dict[str, torch.Tensor]:
    """A reproducible, well-scaled state dict built from key names and shapes only.

    Used for golden values: the same procedure applied to the official modules produced the numbers
    in ``GOLDEN``. Tensors are filled in sorted-key order from one generator; spectral-norm vectors
    come from 20 power iterations started at a constant vector, so sigma is close to the top
    singular value.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for key in sorted(state):
        tensor = state[key]
        if key.endswith("num_batches_tracked") or key.endswith(("weight_u", "weight_v")):
            continue
        if key.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        elif ".grn." in key:  # GRN gamma/beta start at zero upstream; make them matter
            tensor.copy_(0.5 * torch.randn(tensor.shape, generator=gen))
        elif tensor.ndim == 1 and key.endswith("weight"):  # norm scales
            tensor.copy_(1 + 0.1 * torch.randn(tensor.shape, generator=gen))
        elif tensor.ndim == 1:
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
        else:
            fan_in = tensor.numel() // tensor.shape[0]
            tensor.copy_(torch.randn(tensor.shape, generator=gen) / math.sqrt(fan_in))
    for key in sorted(state):
        if key.endswith("weight_orig"):
            prefix = key[: -len("orig")]
            matrix = state[key].reshape(state[key].shape[0], -1)
            u = torch.full((matrix.shape[0],), matrix.shape[0] ** -0.5)
            for _ in range(20):
                v = nn.functional.normalize(matrix.t() @ u, dim=0, eps=1e-12)
                u = nn.functional.normalize(matrix @ v, dim=0, eps=1e-12)
            state[prefix + "u"].copy_(u)
            state[prefix + "v"].copy_(v)
    return state


def golden_inputs(name: str) -> dict[str, torch.Tensor]:
    return make_example_inputs(name, SMALL_INPUTS[name], generator=torch.Generator().manual_seed(99))


def _randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Give BatchNorm statistics and zero-initialised parameters (GRN) non-trivial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif key.endswith(("grn.gamma", "grn.beta")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
    return model.eval()


def _build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_(RENDERER_MODELS[name](), seed)


def _inputs(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return make_example_inputs(name, SMALL_INPUTS[name], generator=torch.Generator().manual_seed(seed))


def _flat(out) -> torch.Tensor:
    if isinstance(out, dict):
        return torch.cat([value.flatten() for value in out.values()])
    return out.flatten()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: _build(name, seed=index) for index, name in enumerate(NAMES)}


# ------------------------------------------------------------------------------------------- tables
def test_tables_cover_every_model_and_match_forward_signatures():
    assert NAMES == ["appearance_extractor", "motion_extractor", "warp_network", "decoder", "stitch_network"]
    assert set(ONNX_IO) == set(ONNX_INPUT_SHAPES) == set(ONNX_OUTPUT_SHAPES) == set(NAMES)
    for name, cls in RENDERER_MODELS.items():
        input_names, output_names = ONNX_IO[name]
        params = list(inspect.signature(cls.forward).parameters)[1:]
        assert tuple(params) == input_names, name  # runners call model(**inputs)
        assert tuple(ONNX_INPUT_SHAPES[name]) == input_names
        assert tuple(ONNX_OUTPUT_SHAPES[name]) == output_names
    assert ONNX_IO == OFFICIAL_ONNX_IO


# ------------------------------------------------------------------------------ checkpoint layout
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_layout_matches_official(name):
    with torch.device("meta"):
        model = RENDERER_MODELS[name]()
    state = model.state_dict()
    n_keys, n_params, rounded = LAYOUT[name]
    assert len(state) == n_keys
    total = sum(p.numel() for p in model.parameters())
    assert total == n_params
    digits = 3 if rounded < 0.1 else (2 if rounded < 1 else 1)
    assert round(total / 1e6, digits) == rounded
    for key, shape in KEY_SHAPES[name].items():
        assert tuple(state[key].shape) == shape, key
    text = "".join(f"{k}:{tuple(v.shape)}:{v.dtype}\n" for k, v in sorted(state.items()))
    assert hashlib.sha256(text.encode()).hexdigest() == OFFICIAL_FINGERPRINT[name]


def test_decoder_spectral_norm_and_batchnorm_keys():
    with torch.device("meta"):
        decoder_keys = set(RENDERER_MODELS["decoder"]().state_dict())
        warp_keys = set(RENDERER_MODELS["warp_network"]().state_dict())
    for conv in ("conv_0", "conv_1"):
        assert {f"G_middle_3.{conv}.{s}" for s in ("weight_orig", "weight_u", "weight_v", "bias")} <= decoder_keys
        assert f"G_middle_3.{conv}.weight" not in decoder_keys
    assert "up_1.conv_s.weight_orig" in decoder_keys and "up_1.conv_s.bias" not in decoder_keys
    assert "G_middle_0.conv_s.weight_orig" not in decoder_keys  # 512→512: identity shortcut
    assert sum(k.endswith("weight_orig") for k in decoder_keys) == 6 * 2 + 2 * 3
    assert "dense_motion_network.norm.num_batches_tracked" in warp_keys


# --------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("name", NAMES)
def test_strict_state_dict_round_trip(name, models, tmp_path):
    model = models[name]
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)

    fresh = RENDERER_MODELS[name]().eval()
    inputs = _inputs(name)
    with torch.no_grad():
        expected = _flat(model(**inputs))
        assert not torch.equal(_flat(fresh(**inputs)), expected)  # the load below must matter
        result = fresh.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert torch.equal(_flat(fresh(**inputs)), expected)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_official_golden_values(name):
    model = RENDERER_MODELS[name]().eval()
    model.load_state_dict(deterministic_state_dict(model), strict=True)
    with torch.no_grad():
        flat = _flat(model(**golden_inputs(name)))
    mean, std, values = GOLDEN[name]
    picked = [flat[i % flat.numel()].item() for i in GOLDEN_INDICES]
    np.testing.assert_allclose(picked, values, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose([flat.mean().item(), flat.std().item()], [mean, std], rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", NAMES)
def test_full_size_output_shapes(name):
    with torch.device("meta"):
        model = RENDERER_MODELS[name]().eval()
        inputs = {k: torch.empty(shape) for k, shape in ONNX_INPUT_SHAPES[name].items()}
        out = model(**inputs)
    expected = ONNX_OUTPUT_SHAPES[name]
    if isinstance(out, dict):
        assert list(out) == list(expected)
        assert {k: tuple(v.shape) for k, v in out.items()} == expected
    else:
        (shape,) = expected.values()
        assert tuple(out.shape) == shape


def test_small_forward_values(models):
    with torch.no_grad():
        image = models["decoder"](**_inputs("decoder"))
        assert image.shape == (1, 3, 128, 128)  # ×2 ×2 upsampling, then PixelShuffle(2)
        assert float(image.min()) > 0 and float(image.max()) < 1 and float(image.std()) > 1e-4
        motion = models["motion_extractor"](**_inputs("motion_extractor"))
        assert list(motion) == list(MOTION_OUTPUT_NAMES)
        feat = models["motion_extractor"].detector.embed(_inputs("motion_extractor")["image"])
        assert torch.equal(motion["kp"], models["motion_extractor"].detector.fc_kp(feat))
        assert torch.equal(motion["scale"], models["motion_extractor"].detector.fc_scale(feat))


# ------------------------------------------------------------------------------- warp geometry
def test_identity_grid_and_heatmaps():
    grid = identity_grid_3d(3, 4, 5, torch.zeros(1))
    assert grid.shape == (3, 4, 5, 3)
    assert torch.allclose(grid[0, 0, :, 0], torch.linspace(-1, 1, 5))  # x along width
    assert torch.allclose(grid[0, :, 0, 1], torch.linspace(-1, 1, 4))  # y along height
    assert torch.allclose(grid[:, 0, 0, 2], torch.linspace(-1, 1, 3))  # z along depth
    kp = torch.tensor([[[0.5, -1.0, 0.0]]])  # x=0.5 → w index 3 of 5, y=-1 → h 0, z=0 → d 1
    heat = gaussian_heatmaps(kp, (3, 4, 5), 0.01)
    assert heat.shape == (1, 1, 3, 4, 5)
    assert torch.argmax(heat.flatten()).item() == np.ravel_multi_index((1, 0, 3), (3, 4, 5))
    assert math.isclose(heat.max().item(), 1.0, rel_tol=1e-6)


def test_dense_motion_is_identity_when_keypoints_do_not_move(models):
    dense = models["warp_network"].dense_motion_network
    inputs = _inputs("warp_network")
    kp = inputs["kp_source"]
    with torch.no_grad():
        deformation, occlusion = dense(inputs["feature_3d"], kp, kp)
        grid = identity_grid_3d(16, 32, 32, kp)
        assert torch.allclose(deformation[0], grid, atol=1e-6)
        moved, _ = dense(inputs["feature_3d"], kp + 0.2, kp)
        assert not torch.allclose(moved[0], grid, atol=1e-3)
    assert occlusion.shape == (1, 1, 32, 32) and float(occlusion.min()) >= 0 and float(occlusion.max()) <= 1


def test_motion_hypotheses_map_driving_keypoints_onto_source_keypoints(models):
    """Backward warping: hypothesis k, evaluated at x_d[k], must sample the source volume at x_s[k]."""
    dense = models["warp_network"].dense_motion_network
    depth, height, width = 16, 32, 32
    grid = identity_grid_3d(depth, height, width, torch.zeros(1))
    kp_d = torch.stack([grid[3 + k % 10, 2 * k % height, (5 * k) % width] for k in range(21)]).unsqueeze(0)
    kp_s = kp_d + torch.linspace(-0.3, 0.3, 63).view(1, 21, 3)
    volume = torch.zeros(1, 4, depth, height, width)
    flows = dense._candidate_flows(volume, kp_s, kp_d)
    assert flows.shape == (1, 22, depth, height, width, 3)
    assert torch.equal(flows[0, 0], grid)  # background hypothesis = identity
    for k in range(21):
        z, y, x = 3 + k % 10, 2 * k % height, (5 * k) % width
        assert torch.allclose(flows[0, k + 1, z, y, x], kp_s[0, k], atol=1e-6)
    heat = dense._heatmap_difference(volume.unsqueeze(1).expand(1, 22, 4, depth, height, width), kp_s, kp_d)
    assert heat.shape == (1, 22, 1, depth, height, width)
    assert torch.count_nonzero(heat[:, 0]) == 0  # background channel
    assert heat[0, 1, 0, 3, 0, 0] > 0.5  # +gaussian at the driving keypoint (kp_d[0] is grid node (3, 0, 0))


# ----------------------------------------------------------------------------------- stitching
def test_stitching_adds_offsets_and_shared_xy_shift(models):
    stitch = models["stitch_network"]
    gen = torch.Generator().manual_seed(3)
    kp_s, kp_d = torch.randn(2, 21, 3, generator=gen) * 0.3, torch.randn(2, 21, 3, generator=gen) * 0.3
    with torch.no_grad():
        out = stitch(kp_s, kp_d)
        delta = stitch.mlp(torch.cat([kp_s.reshape(2, -1), kp_d.reshape(2, -1)], dim=1))
    expected = kp_d + delta[:, :63].reshape(2, 21, 3)
    expected[..., :2] += delta[:, None, 63:65]
    assert out.shape == (2, 21, 3)
    assert torch.allclose(out, expected, atol=1e-7)
    assert torch.allclose(out[..., 2], kp_d[..., 2] + delta[:, 2:63:3], atol=1e-7)  # no shared z shift


# ------------------------------------------------------------------------------- spectral norm
def _reference_and_ours(bias: bool, seed: int):
    torch.manual_seed(seed)
    reference = nn.utils.spectral_norm(nn.Conv2d(6, 5, 3, padding=1, bias=bias))
    with torch.no_grad():  # arbitrary (non-converged) stored vectors
        reference.weight_u.copy_(torch.randn(5))
        reference.weight_v.copy_(torch.randn(54))
    ours = SpectralNormConv2d(6, 5, 3, padding=1, bias=bias)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    return reference, ours


@pytest.mark.parametrize("bias", [True, False])
def test_spectral_norm_eval_uses_stored_vectors_like_torch(bias, tmp_path):
    reference, ours = _reference_and_ours(bias, seed=7)
    reference.eval(), ours.eval()
    u_before, v_before = ours.weight_u.clone(), ours.weight_v.clone()
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(ours.weight_u, u_before) and torch.equal(ours.weight_v, v_before)
        # The normalisation must actually change the result (sigma here is far from 1).
        plain = nn.functional.conv2d(x, ours.weight_orig, ours.bias, padding=1)
        assert not torch.allclose(got, plain, atol=1e-3)

    export_onnx_path = tmp_path / "sn.onnx"
    torch.onnx.export(
        ours, (x,), str(export_onnx_path), input_names=["x"], output_names=["y"], opset_version=20, dynamo=False
    )
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_spectral_norm_training_power_iteration_like_torch():
    reference, ours = _reference_and_ours(True, seed=11)
    reference.train(), ours.train()
    x = torch.randn(1, 6, 5, 5)
    for _ in range(3):
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_u, reference.weight_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight_v, reference.weight_v, rtol=1e-5, atol=1e-6)
    ours(x).sum().backward()  # gradients reach weight_orig through sigma
    assert ours.weight_orig.grad is not None and torch.isfinite(ours.weight_orig.grad).all()


# ----------------------------------------------------------------------------------------- ONNX
ONNX_CASES = [
    ("appearance_extractor", None),
    ("motion_extractor", None),
    ("warp_network", SMALL_INPUTS["warp_network"]),
    ("decoder", SMALL_INPUTS["decoder"]),
    ("stitch_network", None),
]


@pytest.mark.parametrize(("name", "shapes"), ONNX_CASES, ids=[case[0] for case in ONNX_CASES])
def test_onnx_export_opset20_matches_torch(name, shapes, models, tmp_path):
    import onnx
    import onnxruntime as ort

    model = models[name]
    inputs = make_example_inputs(name, shapes, generator=torch.Generator().manual_seed(5))
    path = tmp_path / f"{name}.onnx"
    export_onnx(name, model, path, inputs=inputs)

    graph = onnx.load(str(path), load_external_data=False)
    input_names, output_names = ONNX_IO[name]
    assert [i.name for i in graph.graph.input] == list(input_names)
    assert [o.name for o in graph.graph.output] == list(output_names)
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) == 20
    if name == "warp_network":
        assert sum(node.op_type == "GridSample" for node in graph.graph.node) == 2

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        out = model(**inputs)
    expected = [out[k] for k in output_names] if isinstance(out, dict) else [out]
    for array, tensor in zip(got, expected):
        ref = tensor.numpy()
        assert array.shape == ref.shape
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(array, ref, rtol=0, atol=1e-4 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["warp_network", "decoder"])
def test_onnx_export_full_size(name, models, tmp_path):
    """Official-size export of the two big networks (≈15 s and ≈20 s on 2 CPU cores); runs only with ``-m slow``."""
    test_onnx_export_opset20_matches_torch(name, None, models, tmp_path)


# --------------------------------------------------------------------------------- precision
def test_autocast_and_half_smoke(models):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name in ("appearance_extractor", "motion_extractor", "warp_network", "decoder"):
            out = _flat(models[name](**_inputs(name)))
            assert torch.isfinite(out.float()).all(), name
    decoder = _build("decoder", seed=3).half()
    with torch.no_grad():
        image = decoder(**{k: v.half() for k, v in _inputs("decoder").items()})
    assert image.dtype == torch.float16 and torch.isfinite(image).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_autocast_and_half():
    for name in ("appearance_extractor", "motion_extractor", "warp_network", "decoder"):
        model = _build(name, seed=0).cuda()
        inputs = {k: v.cuda() for k, v in make_example_inputs(name).items()}
        with torch.no_grad():
            reference = _flat(model(**inputs)).float()
            with torch.autocast("cuda", dtype=torch.float16):
                mixed = _flat(model(**inputs)).float()
            assert torch.isfinite(mixed).all(), name
            assert (mixed - reference).abs().max() <= 0.05 * max(1.0, reference.abs().max().item()), name
            if name in ("warp_network", "decoder"):
                half = _flat(model.half()(**{k: v.half() for k, v in inputs.items()})).float()
                assert torch.isfinite(half).all(), name
