"""LMDM MotionDecoder: checkpoint compatibility, guided-step numerics, ONNX twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditto.backends.talkinghead.models.lmdm import (
    ONNX_INPUT_NAMES,
    ONNX_OUTPUT_NAMES,
    MotionDecoder,
    RotaryEmbedding,
    lmdm_from_checkpoint,
)
from ditto.backends.talkinghead.pipeline.sampler import DDIMSampler
from ditto.backends.talkinghead.pipeline.schedule import cosine_alphas_cumprod
from ditto.errors import ConfigError
from ditto.tools.onnx_export import export_lmdm_onnx

# Official lmdm_v0.4_hubert MotionDecoder (docs/pipeline.md §4.2).
OFFICIAL_KEYS = 249
OFFICIAL_PARAMS = 47_788_297
OFFICIAL_SHAPES = {
    "input_projection.weight": (512, 530),
    "cond_projection.weight": (512, 1103),
    "null_cond_embed": (1, 80, 512),
    "null_cond_hidden": (1, 512),
    "final_layer.weight": (265, 512),
    "time_mlp.1.weight": (2048, 512),
    "to_time_cond.0.weight": (512, 2048),
    "to_time_tokens.0.weight": (1024, 2048),
    "cond_encoder.0.self_attn.in_proj_weight": (1536, 512),
    "cond_encoder.1.linear1.weight": (1024, 512),
    "non_attn_cond_projection.3.weight": (512, 512),
    "seqTransDecoder.stack.7.multihead_attn.in_proj_weight": (1536, 512),
    "seqTransDecoder.stack.0.film3.block.1.weight": (1024, 512),
    "seqTransDecoder.stack.3.norm3.weight": (512,),
    "norm_cond.weight": (512,),
    "rotary.freqs": (256,),
}
ROTARY_KEYS = ["rotary.freqs", "cond_encoder.0.rotary.freqs", "cond_encoder.1.rotary.freqs"] + [
    f"seqTransDecoder.stack.{i}.rotary.freqs" for i in range(8)
]


@pytest.fixture(scope="module")
def model() -> MotionDecoder:
    torch.manual_seed(0)
    return MotionDecoder().eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(1, 80, 265, generator=g),
        torch.randn(1, 265, generator=g),
        torch.randn(1, 80, 1103, generator=g),
        torch.tensor([499], dtype=torch.int64),
    )


def test_state_dict_matches_official_layout(model: MotionDecoder) -> None:
    sd = model.state_dict()
    assert len(sd) == OFFICIAL_KEYS
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    for key in ROTARY_KEYS:
        assert key in sd
    # schedule tables are derived: not in the checkpoint
    assert not any("alpha" in k or "recip" in k for k in sd)


def test_strict_round_trip(model: MotionDecoder, inputs) -> None:
    loaded = lmdm_from_checkpoint({"model_state_dict": model.state_dict(), "epoch": 3})
    assert not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.inference_mode():
        a, b = model(*inputs), loaded(*inputs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_round_trip_through_a_pth_file(tmp_path) -> None:
    torch.manual_seed(3)
    small = MotionDecoder(latent_dim=64, ff_size=128, num_layers=2).eval()
    path = tmp_path / "lmdm_v0.4_hubert.pth"
    torch.save({"model_state_dict": small.state_dict()}, path)
    loaded = lmdm_from_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
    x = torch.randn(1, 80, 265), torch.randn(1, 265), torch.randn(1, 80, 1103), torch.tensor([10])
    with torch.inference_mode():
        assert torch.equal(small(*x)[1], loaded(*x)[1])


def test_from_checkpoint_infers_condition_width() -> None:
    small = MotionDecoder(latent_dim=64, ff_size=128, num_layers=2, cond_feature_dim=1059)
    sd = {"module." + k: v for k, v in small.state_dict().items()}
    loaded = lmdm_from_checkpoint({"model_state_dict": sd})
    assert loaded.cond_feature_dim == 1059
    assert loaded.latent_dim == 64 and len(loaded.seqTransDecoder.stack) == 2


def test_from_checkpoint_errors(model: MotionDecoder) -> None:
    sd = dict(model.state_dict())
    with pytest.raises(ConfigError, match="model_state_dict"):
        lmdm_from_checkpoint(sd)
    with pytest.raises(ConfigError):
        lmdm_from_checkpoint({"model_state_dict": {k: v for k, v in sd.items() if k != "norm_cond.bias"}})
    bad = dict(sd)
    bad["seqTransDecoder.stack.0.linear1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConfigError):
        lmdm_from_checkpoint({"model_state_dict": bad})
    with pytest.raises(ConfigError):
        lmdm_from_checkpoint([1, 2])


def test_rotary_is_pairwise_complex_rotation() -> None:
    rot = RotaryEmbedding(8)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    ang = torch.arange(5, dtype=torch.float64)[:, None] * theta
    z = torch.view_as_complex(x.reshape(2, 5, 4, 2).contiguous()) * torch.polar(torch.ones_like(ang), ang)
    expected = torch.view_as_real(z).reshape(2, 5, 8)
    torch.testing.assert_close(rot(x.float()).double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(rot(x.float())[:, 0], x.float()[:, 0])  # position 0 is not rotated


# -- an independent float64 reference of docs/pipeline.md §4.3, written with torch.nn.functional ------


def _lin(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])


def _ln(x, sd, p):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"])


def _rot(x):
    n, e = x.shape[-2:]
    theta = 10000.0 ** (-torch.arange(0, e, 2, dtype=x.dtype) / e)
    ang = torch.arange(n, dtype=x.dtype)[:, None] * theta
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], e // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(ang), ang)).reshape(x.shape)


def _mha(q, k, v, sd, p, heads=8):
    e = q.shape[-1]
    out, _ = F.multi_head_attention_forward(
        q.transpose(0, 1),
        k.transpose(0, 1),
        v.transpose(0, 1),
        e,
        heads,
        sd[p + ".in_proj_weight"],
        sd[p + ".in_proj_bias"],
        None,
        None,
        False,
        0.0,
        sd[p + ".out_proj.weight"],
        sd[p + ".out_proj.bias"],
        training=False,
        need_weights=False,
    )
    return out.transpose(0, 1)


def _reference_branch(sd, x, cf, cond, t, conditional: bool):
    e = sd["norm_cond.weight"].shape[0]
    b = x.shape[0]
    h = _lin(torch.cat([x, cf[:, None].expand(-1, x.shape[1], -1)], -1), sd, "input_projection")
    half = e // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=x.dtype) / (half - 1))
    ang = t.to(x.dtype)[:, None] * freqs
    th = F.mish(_lin(torch.cat([ang.sin(), ang.cos()], -1), sd, "time_mlp.1"))
    t_film = _lin(th, sd, "to_time_cond.0")
    t_tok = _lin(th, sd, "to_time_tokens.0").reshape(b, 2, e)
    if conditional:
        c = _lin(cond, sd, "cond_projection")
        for i in range(2):
            p = f"cond_encoder.{i}"
            n = _ln(c, sd, p + ".norm1")
            c = c + _mha(_rot(n), _rot(n), n, sd, p + ".self_attn")
            n = _ln(c, sd, p + ".norm2")
            c = c + _lin(F.gelu(_lin(n, sd, p + ".linear1")), sd, p + ".linear2")
        pooled = _ln(c.mean(1), sd, "non_attn_cond_projection.0")
        hidden = _lin(F.silu(_lin(pooled, sd, "non_attn_cond_projection.1")), sd, "non_attn_cond_projection.3")
    else:
        c = sd["null_cond_embed"].expand(b, -1, -1)
        hidden = sd["null_cond_hidden"].expand(b, -1)
    tt = t_film + hidden
    mem = _ln(torch.cat([c, t_tok], 1), sd, "norm_cond")
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("seqTransDecoder.stack.")})
    for i in range(n_layers):
        p = f"seqTransDecoder.stack.{i}"

        def film(j, y):
            scale, shift = _lin(F.mish(tt), sd, f"{p}.film{j}.block.1")[:, None].chunk(2, -1)
            return (scale + 1) * y + shift

        n = _ln(h, sd, p + ".norm1")
        h = h + film(1, _mha(_rot(n), _rot(n), n, sd, p + ".self_attn"))
        n = _ln(h, sd, p + ".norm2")
        h = h + film(2, _mha(_rot(n), _rot(mem), mem, sd, p + ".multihead_attn"))
        n = _ln(h, sd, p + ".norm3")
        h = h + film(3, _lin(F.gelu(_lin(n, sd, p + ".linear1")), sd, p + ".linear2"))
    return _lin(h, sd, "final_layer")


def test_guided_step_matches_two_unbatched_reference_passes(model: MotionDecoder) -> None:
    g = torch.Generator().manual_seed(7)
    b = 2  # also checks the 2B batching keeps rows apart
    x = torch.randn(b, 80, 265, generator=g)
    cf = torch.randn(b, 265, generator=g)
    cond = torch.randn(b, 80, 1103, generator=g)
    t = torch.tensor([999, 37], dtype=torch.int64)
    with torch.inference_mode():
        pred_noise, x_start = model(x, cf, cond, t)
    sd = {k: v.double() for k, v in model.state_dict().items()}
    args = (x.double(), cf.double(), cond.double(), t)
    cond_out = _reference_branch(sd, *args, conditional=True)
    uncond_out = _reference_branch(sd, *args, conditional=False)
    expected_x0 = uncond_out + 2.0 * (cond_out - uncond_out)
    scale = expected_x0.abs().max().item()
    torch.testing.assert_close(x_start.double(), expected_x0, rtol=0, atol=2e-4 * scale)
    # weight 2 matters: plain conditional output is far from the guided one
    assert (cond_out - expected_x0).abs().max().item() > 100 * 2e-4 * scale

    ac = cosine_alphas_cumprod().double()[t].view(-1, 1, 1)
    expected_noise = x.double() / torch.sqrt(1 - ac) - x_start.double() / torch.sqrt(1 / ac - 1)
    torch.testing.assert_close(pred_noise.double(), expected_noise, rtol=1e-4, atol=1e-3)


def test_one_prepared_window_serves_every_step(model: MotionDecoder, inputs) -> None:
    """The samplers prepare a window once for its S steps, then run them: each step is the full call."""
    x, cond_frame, cond, time_cond = inputs
    g = torch.Generator().manual_seed(3)
    times = [torch.full_like(time_cond, t) for t in (999, 499, 0)]
    with torch.inference_mode():
        window = model.prepare_window(cond_frame, cond, times)
        for step, t in enumerate(times):
            x_t = torch.randn(x.shape, generator=g)
            for got, expected in zip(model.denoise_step(x_t, window, step), model(x_t, cond_frame, cond, t)):
                # float rounding only (pred_noise at t = 0 is x_start scaled by ~160: compare to the magnitude)
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_schedule_table_matches_sampler(model: MotionDecoder) -> None:
    """The model's pred_noise tables and the sampler come from the one cosine schedule."""
    ac = cosine_alphas_cumprod()
    assert torch.equal(model.sqrt_recip_one_minus_ac, torch.sqrt(1.0 / (1.0 - ac)))
    assert torch.equal(model.sqrt_recip_ac_minus_one, torch.sqrt(1.0 / ac - 1.0))
    assert torch.equal(DDIMSampler().alphas_cumprod, ac)


def test_onnx_twin_agrees_with_onnxruntime(model: MotionDecoder, inputs, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "lmdm_v0.4_hubert.onnx"
    export_lmdm_onnx(model, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(ONNX_INPUT_NAMES)
    assert [o.name for o in sess.get_outputs()] == list(ONNX_OUTPUT_NAMES)
    types = {i.name: i.type for i in sess.get_inputs()}
    assert types["time_cond"] == "tensor(int64)" and types["x"] == "tensor(float)"
    assert [i.shape for i in sess.get_inputs()] == [[1, 80, 265], [1, 265], [1, 80, 1103], [1]]
    import onnx

    opsets = onnx.load(str(path), load_external_data=False).opset_import
    assert max(o.version for o in opsets if o.domain in ("", "ai.onnx")) == 20
    feeds = {name: t.numpy() for name, t in zip(ONNX_INPUT_NAMES, inputs)}
    pred_noise, x_start = sess.run(None, feeds)
    with torch.inference_mode():
        ref_noise, ref_x0 = model(*inputs)
    np.testing.assert_allclose(x_start, ref_x0.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(pred_noise, ref_noise.numpy(), rtol=0, atol=1e-4)
