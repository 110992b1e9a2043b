"""What each Ditto TensorRT engine must expose: its IO tensors (bindings) and shape profiles.

A TensorRT engine built from one of the ``ditto_onnx`` models keeps the ONNX
tensor names, order and shapes (docs/pipeline.md §4.1): the IO of an fp16 engine
stays float32 (``polygraphy --fp16`` and the FP16 builder flag change layer
precision only), and an int64 ONNX input becomes an INT32 binding under
TensorRT 8.6 (TensorRT 10 may keep it int64), which is why the runner casts
``time_cond`` to whatever the engine declares.

Nothing here is a second copy of the IO tables. The tables are read from
where the models are defined:

* renderer models: ``ONNX_IO`` / ``ONNX_INPUT_SHAPES`` / ``ONNX_OUTPUT_SHAPES``
  of :mod:`ditto.backends.talkinghead.models`;
* LMDM: ``ONNX_INPUT_NAMES`` / ``ONNX_OUTPUT_NAMES`` of
  :mod:`ditto.backends.talkinghead.models.lmdm`, dimensions from
  :class:`~ditto.backends.talkinghead.models.lmdm.MotionDecoder`'s defaults (or the
  cfg pkl's ``audio2motion_cfg``);
* face detector: ``DITTO_INPUT_NAME`` / ``DITTO_OUTPUT_NAMES`` of
  :mod:`ditto.backends.talkinghead.aux_models.face_detector`.

The remaining auxiliary models (landmarks, BlazeFace, face mesh, HuBERT) have
no table elsewhere in the runtime; :data:`AUX_IO` below is theirs, and the
test suite checks it against the ONNX stand-ins of the generated checkpoints.

The HuBERT shape profile (:data:`SHAPE_PROFILES`) is shared by the engine
builder (``ditto/tools/build_engines.py``) and the runner's input checks.

Batch axis: the official engines are fixed at batch 1. The models of
:data:`BATCH_AXIS_MODELS` (the per-frame networks a device engine batches across
sessions) may instead declare a dynamic leading axis — the ONNX twins of the test
tree do, and so do engines ``build_engines`` makes from such ONNX files — and both
forms fit (:func:`binding_problems`). HuBERT's graph has no batch axis (its output
is ``(T, 1024)``), so it is not among them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ditto.backends.talkinghead.config import ENGINE_PRECISION_TAGS

#: Dimension TensorRT reports for a dynamic axis.
DYNAMIC = -1


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One IO tensor of a model, as ONNX declares it."""

    name: str  # ONNX / binding name
    is_input: bool
    shape: tuple[int, ...]  # DYNAMIC (-1) for a dynamic axis
    dtype: str  # ONNX element type as a numpy name: "float32", "int64", …

    @property
    def engine_dtypes(self) -> tuple[str, ...]:
        """Binding types a TensorRT engine built from this tensor may declare.

        int64 → INT32 under TensorRT 8.6 (the ONNX parser narrows it; the
        official LMDM engine's ``time_cond``); TensorRT ≥ 10 may keep INT64.
        """
        if self.dtype == "int64":
            return ("int32", "int64")
        return (self.dtype,)


@dataclass(frozen=True, slots=True)
class ShapeProfile:
    """An optimization profile for one dynamic input: min / opt / max shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


#: HuBERT's dynamic sample axis (official ``scripts/cvt_onnx_to_trt.py``): half, one and two
#: 6480-sample windows (6480 = (3 + 5 + 2) frames × 640 samples + 80).
SHAPE_PROFILES: Mapping[str, Mapping[str, ShapeProfile]] = MappingProxyType(
    {
        "hubert": MappingProxyType({"input_values": ShapeProfile((1, 3240), (1, 6480), (1, 12960))}),
    }
)

#: Models whose every IO tensor may have a dynamic leading (batch) axis instead of the official 1.
BATCH_AXIS_MODELS: frozenset[str] = frozenset({"decoder", "lmdm", "stitch_network", "warp_network"})

#: Auxiliary models without an IO table elsewhere: name → (inputs, outputs), each (name, shape).
#: Shapes: docs/pipeline.md §4.1 (batch 1; detector and HuBERT outputs have no batch axis).
AUX_IO: Mapping[str, tuple[tuple[tuple[str, tuple[int, ...]], ...], tuple[tuple[str, tuple[int, ...]], ...]]] = (
    MappingProxyType(
        {
            "landmark106": ((("data", (1, 3, 192, 192)),), (("fc1", (1, 212)),)),
            "landmark203": ((("input", (1, 3, 224, 224)),), (("landmarks", (1, 406)),)),
            "blaze_face": (
                (("input", (1, 128, 128, 3)),),
                (("regressors", (1, 896, 16)), ("classificators", (1, 896, 1))),
            ),
            "face_mesh": (
                (("input", (1, 256, 256, 3)),),
                (("Identity", (1, 1, 1, 1434)), ("Identity_1", (1, 1, 1, 1)), ("Identity_2", (1, 1, 1, 1))),
            ),
            "hubert": ((("input_values", (1, DYNAMIC)),), (("encoding_out", (DYNAMIC, 1024)),)),
        }
    )
)

#: SCRFD anchors per stride (8, 16, 32) on the 512 input: 2 anchors per cell.
_DET_ANCHORS = {"1": 2 * 64 * 64, "2": 2 * 32 * 32, "3": 2 * 16 * 16}
_DET_WIDTH = {"scores": 1, "boxes": 4, "kps": 10}

#: Every model of the Ditto engine folder (``ditto_trt_Ampere_Plus``), by ONNX/engine base name.
ENGINE_MODELS: tuple[str, ...] = (
    "appearance_extractor",
    "blaze_face",
    "decoder",
    "face_mesh",
    "hubert",
    "insightface_det",
    "landmark106",
    "landmark203",
    "lmdm",
    "motion_extractor",
    "stitch_network",
    "warp_network",
)


def model_for_file(path: str | os.PathLike[str]) -> str | None:
    """Model name of an engine/ONNX file: ``warp_network_fp16.engine`` → ``warp_network``,
    ``lmdm_v0.4_hubert_fp32.engine`` → ``lmdm``; None for a file that is no Ditto model."""
    name = Path(os.fspath(path)).name
    for ext in (".engine", ".trt", ".onnx", ".plan"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    for tag in ENGINE_PRECISION_TAGS:
        if name.endswith(tag):
            name = name[: -len(tag)]
            break
    if name.startswith("lmdm"):
        return "lmdm"
    return name if name in ENGINE_MODELS else None


def lmdm_default_dims() -> tuple[int, int, int]:
    """(seq_frames, motion_feat_dim, audio_feat_dim) = MotionDecoder's defaults (80, 265, 1103)."""
    from ditto.backends.talkinghead.models.lmdm import MotionDecoder

    params = inspect.signature(MotionDecoder).parameters
    return (params["seq_len"].default, params["nfeats"].default, params["cond_feature_dim"].default)


def _lmdm_specs(dims: tuple[int, int, int] | None) -> tuple[TensorSpec, ...]:
    from ditto.backends.talkinghead.models.lmdm import ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES

    seq, nfeats, cond_dim = dims or lmdm_default_dims()
    input_shapes = {"x": (1, seq, nfeats), "cond_frame": (1, nfeats), "cond": (1, seq, cond_dim), "time_cond": (1,)}
    specs = [TensorSpec(n, True, input_shapes[n], "int64" if n == "time_cond" else "float32") for n in ONNX_INPUT_NAMES]
    specs += [TensorSpec(n, False, (1, seq, nfeats), "float32") for n in ONNX_OUTPUT_NAMES]
    return tuple(specs)


def _detector_specs() -> tuple[TensorSpec, ...]:
    from ditto.backends.talkinghead.aux_models.face_detector import DITTO_INPUT_NAME, DITTO_OUTPUT_NAMES

    specs = [TensorSpec(DITTO_INPUT_NAME, True, (1, 3, 512, 512), "float32")]
    for name in DITTO_OUTPUT_NAMES:
        kind, stride_index = name[:-1], name[-1]
        specs.append(TensorSpec(name, False, (_DET_ANCHORS[stride_index], _DET_WIDTH[kind]), "float32"))
    return tuple(specs)


def expected_bindings(
    model: str, *, lmdm_dims: tuple[int, int, int] | None = None, dynamic_batch: bool = False
) -> tuple[TensorSpec, ...]:
    """The IO tensors an engine of ``model`` must have, inputs first, each in ONNX order.

    Args:
        model: a name of :data:`ENGINE_MODELS` (see :func:`model_for_file`).
        lmdm_dims: LMDM (seq_frames, motion_feat_dim, audio_feat_dim) from the
            cfg pkl; default: :func:`lmdm_default_dims`.
        dynamic_batch: for a model of :data:`BATCH_AXIS_MODELS`, the batch-dynamic
            form (axis 0 = :data:`DYNAMIC`) instead of the official batch 1.

    Raises:
        KeyError: an unknown model name.
    """
    specs = _official_bindings(model, lmdm_dims)
    if dynamic_batch and model in BATCH_AXIS_MODELS:
        return tuple(_with_dynamic_batch(s) for s in specs)
    return specs


def _with_dynamic_batch(spec: TensorSpec) -> TensorSpec:
    return TensorSpec(spec.name, spec.is_input, (DYNAMIC, *spec.shape[1:]), spec.dtype)


def _official_bindings(model: str, lmdm_dims: tuple[int, int, int] | None) -> tuple[TensorSpec, ...]:
    if model == "lmdm":
        return _lmdm_specs(lmdm_dims)
    if model == "insightface_det":
        return _detector_specs()
    if model in AUX_IO:
        ins, outs = AUX_IO[model]
        return tuple(
            [TensorSpec(n, True, s, "float32") for n, s in ins] + [TensorSpec(n, False, s, "float32") for n, s in outs]
        )
    from ditto.backends.talkinghead.models import ONNX_INPUT_SHAPES, ONNX_IO, ONNX_OUTPUT_SHAPES

    if model not in ONNX_IO:
        raise KeyError(f"unknown Ditto model {model!r}; known: {', '.join(ENGINE_MODELS)}")
    in_names, out_names = ONNX_IO[model]
    return tuple(
        [TensorSpec(n, True, ONNX_INPUT_SHAPES[model][n], "float32") for n in in_names]
        + [TensorSpec(n, False, ONNX_OUTPUT_SHAPES[model][n], "float32") for n in out_names]
    )


def binding_problems(
    model: str, actual: Sequence[TensorSpec], *, lmdm_dims: tuple[int, int, int] | None = None, shapes: bool = True
) -> list[str]:
    """Differences between an engine's IO tensors and :func:`expected_bindings` (empty: it fits).

    Names and input/output roles must match; each type must be one of
    :attr:`TensorSpec.engine_dtypes`; with ``shapes``, each shape must match,
    with a dynamic axis (-1) only where the ONNX axis is dynamic — or, for a
    model of :data:`BATCH_AXIS_MODELS`, on axis 0. Order is not compared
    (TensorRT lists inputs before outputs but may order within them).
    """
    expected = {s.name: s for s in expected_bindings(model, lmdm_dims=lmdm_dims)}
    got = {s.name: s for s in actual}
    problems: list[str] = []
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for name in expected:
        if name not in got:
            continue
        e, a = expected[name], got[name]
        if e.is_input != a.is_input:
            problems.append(
                f"{name!r} is an {'input' if a.is_input else 'output'}, expected an "
                f"{'input' if e.is_input else 'output'}"
            )
        batch_free = model in BATCH_AXIS_MODELS and tuple(a.shape) == _with_dynamic_batch(e).shape
        if shapes and tuple(a.shape) != tuple(e.shape) and not batch_free:
            problems.append(f"{name!r} has shape {tuple(a.shape)}, expected {e.shape}")
        if a.dtype not in e.engine_dtypes:
            problems.append(f"{name!r} has type {a.dtype}, expected {' or '.join(e.engine_dtypes)}")
    return problems


__all__ = [
    "AUX_IO",
    "BATCH_AXIS_MODELS",
    "DYNAMIC",
    "ENGINE_MODELS",
    "SHAPE_PROFILES",
    "ShapeProfile",
    "TensorSpec",
    "binding_problems",
    "expected_bindings",
    "lmdm_default_dims",
    "model_for_file",
]
