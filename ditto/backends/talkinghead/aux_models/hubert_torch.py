"""HuBERT-large as a torch module, built from the weights of an ONNX HuBERT file.

The official ``hubert_streaming_fix_kv.onnx`` / ``hubert.onnx`` is a graph whose layout we
have never seen (docs/pipeline.md §6: treat it as a black box). onnxruntime on our GPU machine
has only the CPU provider, so on CUDA :func:`hubert_module_from_onnx` reads the file's
weights and maps them onto :class:`~ditto.backends.talkinghead.models.hubert.HubertLarge`, which
then runs (and batches) on the GPU. Two routes, tried in this order:

1. **By name.** Every HubertLarge key is found among the graph's tensor names (initializers,
   Constant nodes and Identity aliases of them), allowing any prefix before the key
   (``hubert.`` for a ``HubertForCTC`` export) and the weight-norm spellings ``weight_g`` /
   ``weight_v``, ``parametrizations.weight.original0`` / ``original1`` or one folded
   ``weight``.
2. **By graph order.** Otherwise (e.g. a default ``torch.onnx.export``, whose Linear weights
   are anonymous ``onnx::MatMul_N`` tensors) the nodes are walked in their (topological)
   order and each float weight tensor is taken at its first use, then matched one by one
   against HubertLarge's weights in forward order with shape checks.

Either route reads each tensor's layout off the node that consumes it: a Linear weight fed
to ``MatMul`` as the right operand is stored (in, out) and is transposed; one behind a
``Transpose`` node or a ``Gemm`` with ``transB=1`` is (out, in) already. The positional conv
may come folded (one (H, H/G, K) weight) or as weight-norm parts (v and g, either order).
The hyperparameters (feature convs, hidden size, positional conv, layers, FFN width, heads)
are read off the graph first: Conv node attributes, Softmax count, weight shapes and the
head split of the attention Reshape nodes (head width 64 if none is readable).

A graph that is not a HuBERT of this architecture (the small conv stand-in of the test tree,
a fused-attention graph, a truncated one) raises :class:`~ditto.errors.ConfigError` naming
the file and the first tensor that does not fit; callers then keep onnxruntime.
:func:`check_module_matches_runner` compares one window through both engines, so a mapping
that fits every shape but not the graph's arithmetic (say k and v taken in another order)
is refused too. (A q/k swap moves the output of a random-weight model by only ~1%, since its
attention is nearly uniform; trained weights attend more sharply, so there it should show, but
that is not verified.) :func:`load_hubert_extractor` puts it together for the backend.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto.backends.talkinghead.aux_models._io import Runner
from ditto.backends.talkinghead.aux_models.hubert import DEFAULT_CHUNKSIZE, HubertFeatureExtractor, split_len
from ditto.backends.talkinghead.models.hubert import HubertLarge
from ditto.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "HubertOnnxWeights",
    "check_module_matches_runner",
    "hubert_module_from_onnx",
    "hubert_state_dict_from_hf",
    "load_hubert_extractor",
    "read_hubert_onnx",
]

_POS = "encoder.pos_conv_embed.conv."
_FLOAT_TYPES = (np.float16, np.float32, np.float64)
#: Relative L2 error allowed between the torch module and the ONNX runner on one window: loose
#: enough for TF32 convolutions on CUDA, far below what a wrong mapping gives (order 1).
MATCH_RTOL = 1e-2


# --------------------------------------------------------------------------- HF checkpoints


def hubert_state_dict_from_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face ``HubertModel`` / ``HubertForCTC`` state dict → HubertLarge keys.

    Strips ``hubert.``, renames ``parametrizations.weight.original0/1`` to ``weight_g/v`` and
    drops what inference does not use (``masked_spec_embed``, the CTC ``lm_head``).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("hubert."):
            key = key[len("hubert.") :]
        if key == "masked_spec_embed" or key.startswith("lm_head."):
            continue
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        out[key] = value
    return out


# --------------------------------------------------------------------------- graph reading


@dataclass(frozen=True, slots=True)
class _Weight:
    """One float tensor of the graph at its first use."""

    name: str  # the name the consuming node uses (an Identity alias keeps its own name)
    array: np.ndarray
    op: str  # the consuming node's type
    index: int  # input position in that node
    attrs: Mapping[str, Any]  # the consuming node's attributes

    def describe(self) -> str:
        return f"{self.name!r} {tuple(self.array.shape)}"


class _Graph:
    """Constant tensors of an ONNX graph, resolved through Identity nodes, in order of first use."""

    def __init__(self, model: Any) -> None:
        from onnx import helper, numpy_helper

        graph = model.graph
        self.nodes = list(graph.node)
        self.values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.producer: dict[str, Any] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.values[node.output[0]] = numpy_helper.to_array(attr.t)
                    elif attr.name in ("value_int", "value_ints"):  # shape constants (head split)
                        self.values[node.output[0]] = np.array(helper.get_attribute_value(attr), np.int64)
        for node in self.nodes:  # Identity chains of constants (the exporter's deduplication)
            if node.op_type == "Identity" and node.input and node.input[0] in self.values:
                self.values[node.output[0]] = self.values[node.input[0]]
        self._attrs = {id(n): {a.name: helper.get_attribute_value(a) for a in n.attribute} for n in self.nodes}
        self.weights: list[_Weight] = []
        self.by_name: dict[str, _Weight] = {}
        for node in self.nodes:
            if node.op_type in ("Identity", "Constant"):
                continue
            for index, name in enumerate(node.input):
                if not name or name in self.by_name:
                    continue
                array = self.values.get(name)
                if array is None or array.dtype.type not in _FLOAT_TYPES or array.size <= 1:
                    continue
                weight = _Weight(name, array, node.op_type, index, self._attrs[id(node)])
                self.weights.append(weight)
                self.by_name[name] = weight

    def attrs(self, node: Any) -> Mapping[str, Any]:
        return self._attrs[id(node)]

    def int_entries(self, name: str) -> list[int | None] | None:
        """Entries of a 1-D int tensor where constant (None where computed), or None if unknown."""
        if name in self.values:
            array = self.values[name]
            return [int(v) for v in array.reshape(-1)] if array.dtype.kind in "iu" else None
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Unsqueeze":
            inner = self.int_entries(node.input[0])
            return inner if inner is not None and len(inner) == 1 else [None]
        if node.op_type == "Concat":
            parts = [self.int_entries(i) for i in node.input]
            return [v for p in parts for v in (p if p is not None else [None])]
        return None


def _state_key_order(cfg: Mapping[str, Any]) -> Iterator[str]:
    """HubertLarge's weights in the order its forward uses them (the pos conv as one ``POS`` slot)."""
    for i in range(len(cfg["conv_kernels"])):
        base = f"feature_extractor.conv_layers.{i}."
        yield base + "conv.weight"
        if cfg["conv_bias"]:
            yield base + "conv.bias"
        yield base + "layer_norm.weight"
        yield base + "layer_norm.bias"
    yield from (
        "feature_projection.layer_norm.weight",
        "feature_projection.layer_norm.bias",
        "feature_projection.projection.weight",
        "feature_projection.projection.bias",
    )
    yield "POS"
    yield _POS + "bias"
    for n in range(cfg["num_layers"]):
        base = f"encoder.layers.{n}."
        for part in (
            "layer_norm",
            "attention.q_proj",
            "attention.k_proj",
            "attention.v_proj",
            "attention.out_proj",
            "final_layer_norm",
            "feed_forward.intermediate_dense",
            "feed_forward.output_dense",
        ):
            yield base + part + ".weight"
            yield base + part + ".bias"
    yield "encoder.layer_norm.weight"
    yield "encoder.layer_norm.bias"


def _infer_config(g: _Graph) -> dict[str, Any]:
    """HubertLarge constructor arguments read off the graph; defaults (large) where unreadable."""
    cfg = {name: p.default for name, p in inspect.signature(HubertLarge).parameters.items()}
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    pos = next((n for n in convs if int(g.attrs(n).get("group", 1)) > 1), None)
    feature = [
        n
        for n in convs[: convs.index(pos) if pos is not None else len(convs)]
        if int(g.attrs(n).get("group", 1)) == 1 and n.input[1] in g.values
    ]
    if feature:
        cfg["conv_kernels"] = tuple(int(g.values[n.input[1]].shape[-1]) for n in feature)
        cfg["conv_strides"] = tuple(int(list(g.attrs(n).get("strides", [1]))[0]) for n in feature)
        cfg["conv_dim"] = int(g.values[feature[0].input[1]].shape[0])
        cfg["conv_bias"] = len(feature[0].input) > 2 and bool(feature[0].input[2])
    if pos is not None:
        groups = int(g.attrs(pos).get("group", 1))
        kernel = list(g.attrs(pos).get("kernel_shape", []))
        bias = g.values.get(pos.input[2]) if len(pos.input) > 2 else None
        weight = g.values.get(pos.input[1])
        hidden = int(bias.shape[0]) if bias is not None else int(weight.shape[0]) if weight is not None else None
        if hidden:
            cfg["hidden_size"], cfg["pos_conv_groups"] = hidden, groups
            cfg["pos_conv_kernel"] = int(kernel[0]) if kernel else int(weight.shape[-1]) if weight is not None else 128
    hidden = cfg["hidden_size"]
    softmax = sum(1 for n in g.nodes if n.op_type == "Softmax")
    if softmax:
        cfg["num_layers"] = softmax
    wide = Counter(d for w in g.weights if w.array.ndim == 2 for d in w.array.shape if d != hidden)
    if wide:
        cfg["intermediate_size"] = wide.most_common(1)[0][0]
    splits: Counter[int] = Counter()
    for node in g.nodes:  # the attention's (B, T, heads, head width) reshapes; -1 for one of the two
        entries = g.int_entries(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if not entries or len(entries) != 4:
            continue
        heads, width = entries[2], entries[3]
        if heads is None or width is None:
            continue
        if heads == -1 and 0 < width < hidden and hidden % width == 0:
            heads = hidden // width
        elif width == -1 and 0 < heads < hidden and hidden % heads == 0:
            width = hidden // heads
        if heads > 0 and heads * width == hidden:
            splits[heads] += 1
    cfg["num_heads"] = splits.most_common(1)[0][0] if splits else max(1, hidden // 64)
    eps = next((g.attrs(n).get("epsilon") for n in g.nodes if n.op_type == "LayerNormalization"), None)
    if eps is not None:  # decomposed LayerNorms (opset < 17) keep the default
        cfg["layer_norm_eps"] = float(eps)
    return cfg


def _expected_shapes(cfg: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = HubertLarge(**cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _linear_weight(w: _Weight, shape: tuple[int, ...]) -> np.ndarray | None:
    """``w`` as an (out, in) Linear weight of ``shape``, or None if it does not fit."""
    a = w.array
    if a.ndim != 2:
        return None
    if w.op == "MatMul":
        a = a.T if w.index == 1 else a  # x @ W: W is (in, out)
    elif w.op == "Gemm" and w.index == 1:
        a = a if int(w.attrs.get("transB", 0)) else a.T
    elif w.op != "Transpose" and a.shape != shape and a.T.shape == shape:
        a = a.T
    return a if a.shape == shape else None


def _fit(w: _Weight, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """``w`` as the value of ``key``, or None if it does not fit."""
    if len(shape) == 2:
        return _linear_weight(w, shape)
    a = w.array
    if a.shape == shape:
        return a
    if len(shape) == 1 and a.size == shape[0] and max(a.shape) == a.size:  # (1, 1, C) biases and scales
        return a.reshape(shape)
    return None


def _weight_norm_parts(v: np.ndarray, g: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(weight_g, weight_v) for HubertLarge; a folded weight W becomes v = W, g = ‖W‖."""
    if g is None:
        g = np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True)).astype(np.float32)
    return g.reshape(1, 1, -1), v


class _Mismatch(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _map_by_name(
    g: _Graph, cfg: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray] | None:
    """Values for every key found by name, None if some key has no (unique) name; _Mismatch on a bad shape."""

    def lookup(key: str) -> _Weight | None:
        hits = [w for name, w in g.by_name.items() if name == key or name.endswith("." + key)]
        return hits[0] if len(hits) == 1 else None

    out: dict[str, np.ndarray] = {}
    for key in _state_key_order(cfg):
        if key == "POS":
            g_w, v_w = lookup(_POS + "weight_g"), lookup(_POS + "weight_v")
            if g_w is None or v_w is None:
                g_w = lookup(_POS + "parametrizations.weight.original0")
                v_w = lookup(_POS + "parametrizations.weight.original1")
            if g_w is None or v_w is None:
                g_w, v_w = None, lookup(_POS + "weight")
                if v_w is None:
                    return None
            if v_w.array.shape != shapes[_POS + "weight_v"]:
                raise _Mismatch(f"tensor {v_w.describe()} does not fit {_POS}weight_v {shapes[_POS + 'weight_v']}")
            if g_w is not None and g_w.array.size != shapes[_POS + "weight_g"][-1]:
                raise _Mismatch(f"tensor {g_w.describe()} does not fit {_POS}weight_g {shapes[_POS + 'weight_g']}")
            out[_POS + "weight_g"], out[_POS + "weight_v"] = _weight_norm_parts(
                v_w.array, g_w.array if g_w is not None else None
            )
            continue
        w = lookup(key)
        if w is None:
            return None
        value = _fit(w, key, shapes[key])
        if value is None:
            raise _Mismatch(f"tensor {w.describe()} does not fit {key} {shapes[key]}")
        out[key] = value
    return out


def _map_by_order(g: _Graph, cfg: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Values for every key from the graph's weights in order of first use; _Mismatch at the first misfit."""
    weights = iter(g.weights)
    out: dict[str, np.ndarray] = {}

    def take(key: str, shape: tuple[int, ...]) -> _Weight:
        w = next(weights, None)
        if w is None:
            raise _Mismatch(f"the graph has only {len(g.weights)} weight tensors: none left for {key} {shape}")
        return w

    v_shape, k = shapes[_POS + "weight_v"], shapes[_POS + "weight_g"][-1]
    for key in _state_key_order(cfg):
        if key != "POS":
            w = take(key, shapes[key])
            value = _fit(w, key, shapes[key])
            if value is None:
                raise _Mismatch(
                    f"tensor {w.describe()} (use #{g.weights.index(w)}, by {w.op}) is where "
                    f"{key} {shapes[key]} should be"
                )
            out[key] = value
            continue
        first = take(_POS + "weight", v_shape)
        if first.op == "Conv" and first.array.shape == v_shape:  # folded weight norm
            out[_POS + "weight_g"], out[_POS + "weight_v"] = _weight_norm_parts(first.array, None)
            continue
        second = take(_POS + "weight_g", (1, 1, k))
        pair = sorted((first, second), key=lambda w: w.array.size)  # g (K values) before v
        if pair[0].array.size != k or pair[1].array.shape != v_shape:
            raise _Mismatch(
                f"tensors {first.describe()}, {second.describe()} are where the positional conv's "
                f"weight norm (g {(1, 1, k)}, v {v_shape}) should be"
            )
        out[_POS + "weight_g"], out[_POS + "weight_v"] = _weight_norm_parts(pair[1].array, pair[0].array)
    extra = next(weights, None)
    if extra is not None:
        raise _Mismatch(
            f"tensor {extra.describe()} (use #{g.weights.index(extra)}, by {extra.op}) is left over "
            f"after the last HuBERT weight"
        )
    return out


@dataclass(frozen=True, slots=True)
class HubertOnnxWeights:
    """What :func:`read_hubert_onnx` found in a file."""

    config: dict[str, Any]  # HubertLarge constructor arguments
    state_dict: dict[str, Tensor]  # HubertLarge keys, float32, CPU
    route: str  # "name" or "graph order"


def read_hubert_onnx(path: str | os.PathLike[str]) -> HubertOnnxWeights:
    """Read the weights of the ONNX HuBERT at ``path`` as a HubertLarge config + state dict.

    Raises:
        ConfigError: unreadable file, or a graph whose weights do not map onto a HuBERT of this
            architecture; the message names the file and the first tensor that does not fit.
    """
    import onnx

    p = os.fspath(path)
    try:
        model = onnx.load(p)
    except FileNotFoundError:
        raise ConfigError(f"HuBERT model not found: {p}") from None
    except Exception as exc:  # protobuf DecodeError, missing external data, …
        raise ConfigError(f"cannot read ONNX model {p}: {exc}") from None
    g = _Graph(model)
    del model
    cfg = _infer_config(g)
    try:
        shapes = _expected_shapes(cfg)
    except ValueError as exc:  # inconsistent hyperparameters (e.g. heads that do not divide the width)
        raise ConfigError(f"{p}: not a HuBERT-large graph: {exc}") from None
    try:
        values = _map_by_name(g, cfg, shapes)
        route = "name"
        if values is None:
            values, route = _map_by_order(g, cfg, shapes), "graph order"
    except _Mismatch as exc:
        raise ConfigError(f"{p}: not a HuBERT-large graph ({_describe(cfg)}): {exc.detail}") from None
    state = {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}
    return HubertOnnxWeights(config=cfg, state_dict=state, route=route)


def hubert_module_from_onnx(path: str | os.PathLike[str]) -> HubertLarge:
    """HubertLarge (eval mode, CPU, float32) with the weights of the ONNX HuBERT at ``path``.

    Raises:
        ConfigError: as :func:`read_hubert_onnx`.
    """
    weights = read_hubert_onnx(path)
    with torch.device("meta"):
        module = HubertLarge(**weights.config)
    module.load_state_dict(weights.state_dict, strict=True, assign=True)
    logger.info("%s: HuBERT weights mapped by %s (%s)", os.fspath(path), weights.route, _describe(weights.config))
    return module.eval()


def _describe(cfg: Mapping[str, Any]) -> str:
    return (
        f"{cfg['num_layers']} layers, hidden {cfg['hidden_size']}, {cfg['num_heads']} heads, "
        f"FFN {cfg['intermediate_size']}, {len(cfg['conv_kernels'])} convs of {cfg['conv_dim']}"
    )


# --------------------------------------------------------------------------- checks and loading


def check_module_matches_runner(
    module: torch.nn.Module,
    runner: Runner,
    path: str | os.PathLike[str],
    *,
    num_samples: int = split_len(DEFAULT_CHUNKSIZE),
    seed: int = 0,
    rtol: float = MATCH_RTOL,
) -> float:
    """Run one noise window through ``module`` (fp32, on its device) and ``runner``; return the relative L2 error.

    Raises:
        ConfigError: the outputs differ in shape or by more than ``rtol`` (relative L2).
    """
    window = (np.random.default_rng(seed).standard_normal(num_samples) * 0.1).astype(np.float32)
    expected = HubertFeatureExtractor(runner).encode(window)
    got = HubertFeatureExtractor(module=module).encode(window)
    if got.shape != expected.shape:
        raise ConfigError(f"{os.fspath(path)}: torch HuBERT gives {got.shape}, the ONNX graph {expected.shape}")
    err = float(np.linalg.norm(got - expected) / max(float(np.linalg.norm(expected)), 1e-12))
    if not err <= rtol:  # also catches NaN
        raise ConfigError(f"{os.fspath(path)}: torch HuBERT differs from the ONNX graph (relative error {err:.3g})")
    return err


def load_hubert_extractor(
    path: str | os.PathLike[str] | None,
    runner: Runner,
    device: torch.device | str,
    *,
    prefer_torch: bool | None = None,
    autocast_fp16: bool = False,
) -> HubertFeatureExtractor:
    """The HuBERT feature extractor for the backend.

    With ``prefer_torch`` (default: on CUDA devices), an ``.onnx`` HuBERT whose weights map onto
    :class:`HubertLarge` and which gives the same output as ``runner`` (its onnxruntime runner)
    on one window runs as that torch module on ``device`` (fp32 unless ``autocast_fp16``;
    upstream builds its HuBERT engine in fp32), and the runner is dropped. Otherwise — on the
    CPU (onnxruntime is ~2.5x faster there), for an engine or ``.pth`` file, or a graph that does
    not map — ``runner`` is kept; a graph that does not map is logged as a warning with the reason.
    """
    device = torch.device(device)
    if prefer_torch is None:
        prefer_torch = device.type == "cuda"
    if not prefer_torch or path is None or Path(path).suffix.lower() != ".onnx":
        return HubertFeatureExtractor(runner)
    try:
        module = hubert_module_from_onnx(path).to(device)
        err = check_module_matches_runner(module, runner, path)
    except ConfigError as exc:
        logger.warning("HuBERT stays on onnxruntime: %s", exc)
        return HubertFeatureExtractor(runner)
    logger.info("HuBERT %s runs as a torch module on %s (relative error vs onnxruntime %.2g)", path, device, err)
    return HubertFeatureExtractor(module=module, autocast_fp16=autocast_fp16)
