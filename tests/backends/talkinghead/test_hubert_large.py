"""HubertLarge (the real HuBERT architecture on torch) and its weights read from ONNX files.

Small configs everywhere except the parameter count (meta device) and the ``slow`` test, which
exports the full-size stand-in of ``make_test_checkpoints --hubert large``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ditto.backends.talkinghead.aux_models import hubert_torch as ht
from ditto.backends.talkinghead.aux_models.hubert import HubertFeatureExtractor
from ditto.backends.talkinghead.models.hubert import HubertLarge, export_hubert_onnx, num_frames
from ditto.backends.talkinghead.runtime.onnx_runner import OnnxRunner
from ditto.errors import ConfigError
from ditto.tools.aux_test_models import build_hubert_large_stand_in

#: facebook/hubert-large-ls960-ft as a HF HubertModel: 315,438,720 parameters, of which 1024 are
#: the training-only ``masked_spec_embed`` that HubertLarge leaves out.
HF_LARGE_PARAMS = 315_438_720

SMALL = {
    "conv_dim": 32,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 128,
    "pos_conv_kernel": 16,
    "pos_conv_groups": 4,
}
# Another shape of the same architecture: no conv bias, 3 layers, 2 heads, odd FFN width.
OTHER = {
    "conv_dim": 24,
    "conv_bias": False,
    "hidden_size": 48,
    "num_layers": 3,
    "num_heads": 2,
    "intermediate_size": 72,
    "pos_conv_kernel": 8,
    "pos_conv_groups": 4,
}


def small_module(cfg: dict, seed: int = 0) -> HubertLarge:
    """Random weights with LayerNorms away from 1/0 (so that swapping gain and bias shows)."""
    torch.manual_seed(seed)
    module = HubertLarge(**cfg).eval()
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.LayerNorm):
                layer.weight.add_(0.2 * torch.randn_like(layer.weight))
                layer.bias.add_(0.2 * torch.randn_like(layer.bias))
        g = module.encoder.pos_conv_embed.conv.weight_g
        g.mul_(1 + 0.3 * torch.rand_like(g))
    return module


def audio(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32)


def ort_encode(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_values": x.reshape(1, -1)})[0]


def torch_encode(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x.reshape(1, -1)))[0].numpy()


def anonymise(src, dst) -> None:
    """Rename every initializer and Identity alias to w0, w1, … (the graph keeps its wiring)."""
    model = onnx.load(str(src))
    graph = model.graph
    names = [i.name for i in graph.initializer] + [n.output[0] for n in graph.node if n.op_type == "Identity"]
    mapping = {name: f"w{i}" for i, name in enumerate(names)}
    for init in graph.initializer:
        init.name = mapping[init.name]
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{(config, variant): (path, module)}: named (no folding), folded (anonymous MatMul weights), anonymous."""
    root = tmp_path_factory.mktemp("hubert")
    out = {}
    for name, cfg in (("small", SMALL), ("other", OTHER)):
        module = small_module(cfg)
        export_hubert_onnx(module, root / f"{name}_named.onnx")
        export_hubert_onnx(module, root / f"{name}_folded.onnx", constant_folding=True)
        anonymise(root / f"{name}_named.onnx", root / f"{name}_anon.onnx")
        for variant in ("named", "folded", "anon"):
            out[name, variant] = (root / f"{name}_{variant}.onnx", module)
    return out


# --------------------------------------------------------------------------- the module


def test_default_config_is_hubert_large():
    with torch.device("meta"):
        module = HubertLarge()
    n = sum(p.numel() for p in module.parameters())
    assert abs(n - (HF_LARGE_PARAMS - 1024)) / HF_LARGE_PARAMS < 0.01
    assert n == HF_LARGE_PARAMS - 1024  # exact: the HF layout, masked_spec_embed aside
    keys = module.state_dict().keys()
    assert len(keys) == 421
    assert {
        "feature_extractor.conv_layers.0.conv.weight",
        "feature_extractor.conv_layers.6.layer_norm.bias",
        "feature_projection.projection.weight",
        "encoder.pos_conv_embed.conv.weight_g",
        "encoder.pos_conv_embed.conv.weight_v",
        "encoder.layers.23.attention.q_proj.weight",
        "encoder.layers.23.feed_forward.output_dense.bias",
        "encoder.layer_norm.weight",
    } <= set(keys)
    assert tuple(module.state_dict()["encoder.pos_conv_embed.conv.weight_v"].shape) == (1024, 64, 128)


@pytest.mark.parametrize("length", [400, 719, 720, 3240, 6480, 12960])
def test_rows_follow_the_conv_stack(length):
    module = small_module(SMALL)
    assert torch_encode(module, audio(length)).shape == ((length - 400) // 320 + 1, 64)
    assert num_frames(length) == (length - 400) // 320 + 1


def test_batch_rows_equal_single_rows():
    module = small_module(SMALL)
    x = audio(4, 6480)
    with torch.inference_mode():
        batch = module(torch.from_numpy(x)).numpy()
        alone = np.stack([module(torch.from_numpy(x[b : b + 1]))[0].numpy() for b in range(4)])
    assert batch.shape == (4, 20, 64)
    np.testing.assert_allclose(batch, alone, atol=1e-5, rtol=0)
    assert not np.allclose(batch[0], batch[1], atol=1e-2)  # rows do depend on their audio


def test_hf_state_dict_names_are_ours():
    module = small_module(SMALL)
    renamed = {
        "conv.weight_g": "conv.parametrizations.weight.original0",
        "conv.weight_v": "conv.parametrizations.weight.original1",
    }
    hf = {}
    for key, value in module.state_dict().items():
        for ours, theirs in renamed.items():
            key = key.replace(ours, theirs)
        hf["hubert." + key] = value
    hf["hubert.masked_spec_embed"] = torch.zeros(64)
    hf["lm_head.weight"] = torch.zeros(32, 64)
    again = HubertLarge(**SMALL)
    again.load_state_dict(ht.hubert_state_dict_from_hf(hf), strict=True)
    x = audio(6480)
    np.testing.assert_array_equal(torch_encode(again.eval(), x), torch_encode(module, x))


# --------------------------------------------------------------------------- ONNX → torch


@pytest.mark.parametrize("name", ["small", "other"])
@pytest.mark.parametrize("variant,route", [("named", "name"), ("folded", "graph order"), ("anon", "graph order")])
def test_onnx_weights_map_onto_the_module(exported, name, variant, route):
    path, original = exported[name, variant]
    weights = ht.read_hubert_onnx(path)
    assert weights.route == route
    cfg = {**original.config, "layer_norm_eps": pytest.approx(1e-5)}
    assert weights.config == cfg  # every hyperparameter read off the graph
    module = ht.hubert_module_from_onnx(path)
    x = audio(7001, seed=3)
    expected = ort_encode(path, x)
    np.testing.assert_allclose(torch_encode(module, x), expected, atol=1e-4, rtol=0)
    assert np.abs(expected).max() > 0.5


def test_folded_export_has_anonymous_transposed_linear_weights(exported):
    """Guards the graph-order test: the folded export really is the hard case."""
    model = onnx.load(str(exported["small", "folded"][0]))
    names = {i.name for i in model.graph.initializer}
    assert not any(n.endswith("q_proj.weight") for n in names)
    assert any(n.startswith("onnx::MatMul") for n in names)
    anon = onnx.load(str(exported["small", "anon"][0]))
    assert all(i.name.startswith("w") for i in anon.graph.initializer)


def test_small_conv_stand_in_is_refused_with_the_tensor_named(checkpoint_tree):
    path = checkpoint_tree.pytorch / "aux_models" / "hubert_streaming_fix_kv.onnx"
    with pytest.raises(ConfigError) as info:
        ht.hubert_module_from_onnx(path)
    message = str(info.value)
    assert str(path) in message and "not a HuBERT-large graph" in message
    assert "'proj.weight'" in message  # the first tensor that does not fit


def test_truncated_graph_is_refused(exported, tmp_path):
    """A graph missing its last layer norm: no weight left for it."""
    model = onnx.load(str(exported["small", "named"][0]))
    last = next(n for n in reversed(model.graph.node) if n.op_type == "LayerNormalization")
    before = last.input[0]
    keep = [n for n in model.graph.node if n is not last]
    for node in keep:
        node.input[:] = [before if i == last.output[0] else i for i in node.input]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    path = tmp_path / "truncated.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConfigError, match="none left for encoder.layer_norm"):
        ht.read_hubert_onnx(path)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "hubert.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ConfigError, match=str(bad)):
        ht.read_hubert_onnx(bad)


# --------------------------------------------------------------------------- extractor and loading


def test_extractor_module_path_equals_runner_path(exported):
    path, _ = exported["small", "named"]
    runner = HubertFeatureExtractor(OnnxRunner(path))
    module = HubertFeatureExtractor(module=ht.hubert_module_from_onnx(path), max_batch=2)
    windows = audio(3, 6480, seed=5)
    np.testing.assert_allclose(module.encode_batch(windows), runner.encode_batch(windows), atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        module.encode_batch(torch.from_numpy(windows))[1], runner.encode(windows[1]), atol=1e-4, rtol=0
    )
    assert module.chunk_features_batch(windows).shape == (3, 5, 64)
    speech = audio(16000 * 2 + 123, seed=6)  # 51 frames: 11 windows, batches of 2
    offline = module.offline_features(speech)
    assert offline.shape == (51, 64)
    np.testing.assert_allclose(offline, runner.offline_features(speech), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        HubertFeatureExtractor()


def test_load_hubert_extractor_prefers_torch_only_when_it_maps(exported, checkpoint_tree, caplog):
    path, _ = exported["small", "folded"]
    assert ht.load_hubert_extractor(path, OnnxRunner(path), "cpu").module is None  # CPU: onnxruntime
    ext = ht.load_hubert_extractor(path, OnnxRunner(path), "cpu", prefer_torch=True)
    assert isinstance(ext.module, HubertLarge)
    stand_in = checkpoint_tree.pytorch / "aux_models" / "hubert_streaming_fix_kv.onnx"
    with caplog.at_level(logging.WARNING):
        ext = ht.load_hubert_extractor(stand_in, OnnxRunner(stand_in), "cpu", prefer_torch=True)
    assert ext.module is None and "stays on onnxruntime" in caplog.text


def test_a_mapping_that_fits_the_shapes_but_not_the_graph_is_refused(exported):
    path, _ = exported["small", "folded"]
    module = ht.hubert_module_from_onnx(path)
    assert ht.check_module_matches_runner(module, OnnxRunner(path), path) < 1e-4
    attn = module.encoder.layers[1].attention
    with torch.no_grad():  # k and v taken in the other order (q and k would be too: random weights attend
        k, v = attn.k_proj.weight.clone(), attn.v_proj.weight.clone()  # almost uniformly, so that swap costs ~1%)
        attn.k_proj.weight.copy_(v)
        attn.v_proj.weight.copy_(k)
    with pytest.raises(ConfigError, match="differs from the ONNX graph"):
        ht.check_module_matches_runner(module, OnnxRunner(path), path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_module_batches_like_onnxruntime(exported):
    path, _ = exported["small", "folded"]
    ext = ht.load_hubert_extractor(path, OnnxRunner(path), "cuda")
    assert isinstance(ext.module, HubertLarge) and ext.device.type == "cuda"
    windows = audio(8, 6480, seed=9)
    expected = HubertFeatureExtractor(OnnxRunner(path)).encode_batch(windows)
    np.testing.assert_allclose(ext.encode_batch(windows), expected, atol=1e-3, rtol=0)
    fp16 = HubertFeatureExtractor(module=ext.module, autocast_fp16=True)
    np.testing.assert_allclose(fp16.encode_batch(windows), ext.encode_batch(windows), atol=5e-2, rtol=0)


# --------------------------------------------------------------------------- full size


def test_full_size_stand_in_weights_depend_on_the_seed_alone():
    probes = (
        "feature_extractor.conv_layers.0.conv.weight",
        "encoder.layers.23.attention.v_proj.weight",
        "encoder.layers.5.final_layer_norm.bias",
        "encoder.pos_conv_embed.conv.weight_g",
    )

    def probe(seed: int) -> list[torch.Tensor]:
        state = build_hubert_large_stand_in(seed).state_dict()
        return [state[k].clone() for k in probes]

    torch.manual_seed(123)
    first = probe(0)
    torch.rand(3)  # the global RNG state does not matter
    assert all(torch.equal(a, b) for a, b in zip(first, probe(0)))
    assert not any(torch.equal(a, b) for a, b in zip(first, probe(1)))
    assert float(first[2].abs().max()) > 0.05  # LayerNorm biases jittered away from 0


@pytest.mark.slow
def test_full_size_stand_in_onnx_equals_torch(tmp_path):
    t0 = time.perf_counter()
    path = tmp_path / "hubert_streaming_fix_kv.onnx"
    export_hubert_onnx(build_hubert_large_stand_in(0), path)
    export_s = time.perf_counter() - t0
    size = path.stat().st_size
    assert 1.2e9 < size < 1.3e9
    weights = ht.read_hubert_onnx(path)
    assert weights.route == "name"
    assert {k: v for k, v in weights.config.items() if k != "layer_norm_eps"} == {
        k: v for k, v in HubertLarge().config.items() if k != "layer_norm_eps"
    }
    module = ht.hubert_module_from_onnx(path)
    x = audio(6480, seed=1)
    expected = ort_encode(path, x)
    assert expected.shape == (20, 1024)
    np.testing.assert_allclose(torch_encode(module, x), expected, atol=1e-3, rtol=0)
    print(f"export {export_s:.1f} s, {size / 1e9:.2f} GB")
