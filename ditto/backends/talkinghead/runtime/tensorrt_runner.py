"""TensorRT engines behind the :class:`~.base.ModelRunner` interface.

Two API generations, chosen by the installed ``tensorrt`` version:

* TensorRT 8.6 (the official Ditto engines are TRT 8.6.1): the binding-index
  API — ``num_bindings`` / ``get_binding_name`` / ``binding_is_input`` /
  ``get_binding_shape`` / ``get_binding_dtype`` on the engine,
  ``set_binding_shape`` and ``execute_async_v2(bindings, stream_handle)`` on
  the context.
* TensorRT ≥ 10: named tensors — ``num_io_tensors`` / ``get_tensor_name`` /
  ``get_tensor_mode`` / ``get_tensor_shape`` / ``get_tensor_dtype``,
  ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``.

Device memory is torch's: inputs are cast (``time_cond`` int64 → the engine's
INT32) and moved with torch, outputs are fresh torch CUDA tensors, and work
is queued on torch's current stream, so a GPU-resident pipeline never copies
through the host and stays ordered with the torch ops around it.

Batches (see :mod:`.base`): an engine built with a batch profile
(``build_engines --batch``) takes B rows up to the profile's maximum in one
call — input shapes are set on the context when they change and outputs are
allocated at the shapes TensorRT then reports; ``max_batch`` is that maximum.
A fixed-shape engine (the shipped batch-1 engines) has ``max_batch`` 1 and runs
a batch as one call per row on the same context, outputs concatenated.

An execution context holds the activation memory of one inference at a time:
never share one between two CUDA streams. Each runner has one; the device
engine is its only caller (every session's rows go through it, batched).

Engines that use the GridSample3D plugin (``warp_network``) need the plugin
library loaded (``ctypes``, ``RTLD_GLOBAL``) before they are deserialized:
pass it in ``plugin_paths``. A failed deserialization is explained (other
TensorRT version, other GPU, missing plugin) with the command that fixes it.

``tensorrt`` is imported lazily; without it :class:`TensorRTRunner` raises
:class:`~ditto.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ditto.backends.talkinghead.runtime.base import leading_batch_limit, run_in_batches
from ditto.backends.talkinghead.runtime.trt_bindings import (
    ShapeProfile,
    TensorSpec,
    binding_problems,
    model_for_file,
)
from ditto.errors import ConfigError

logger = logging.getLogger(__name__)

#: TensorRT version the shipped ``ditto_trt_Ampere_Plus`` engines were built with (docs/pipeline.md §2).
OFFICIAL_ENGINE_TRT = "8.6.1"
#: Oldest TensorRT this runner accepts (hardware-compatible engines and plugin serialization).
MIN_TRT_VERSION = (8, 6)
#: File name of the grid-sample plugin in ``ditto_onnx`` (and next to locally built engines).
PLUGIN_FILE_NAME = "libgrid_sample_3d_plugin.so"
#: Folder name suggested for engines rebuilt on this machine.
LOCAL_ENGINE_DIR = "ditto_trt_local"

ApiFlavor = Literal["bindings", "tensors"]


# -- tensorrt module ----------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """``import tensorrt``, or a :class:`ConfigError` that says how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ConfigError(
            "TensorRT engines (.engine/.trt) need the 'tensorrt' Python package, which is not importable "
            f"here ({exc}). Fix: pip install -r requirements-trt.txt (TensorRT {OFFICIAL_ENGINE_TRT} for the "
            "shipped engines) on a machine with an NVIDIA GPU, or serve the PyTorch/ONNX checkpoints instead "
            "(add --fallback, or pass --data_root ../checkpoints/ditto_pytorch "
            "--cfg_pkl ../checkpoints/ditto_cfg/v0.4_hubert_cfg_pytorch.pkl)."
        ) from None
    return trt


def tensorrt_version(trt: Any) -> tuple[int, ...]:
    """``trt.__version__`` as a tuple of ints (``"8.6.1.post1"`` → ``(8, 6, 1)``)."""
    parts = []
    for piece in str(getattr(trt, "__version__", "0")).split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts) or (0,)


def api_flavor(version: tuple[int, ...]) -> ApiFlavor:
    """Binding-index API below TensorRT 10 (removed there), named tensors from 10 on."""
    return "bindings" if version[0] < 10 else "tensors"


def check_tensorrt_version(trt: Any) -> tuple[int, ...]:
    """Raise ConfigError for a TensorRT older than :data:`MIN_TRT_VERSION`; return the version."""
    version = tensorrt_version(trt)
    if version[:2] < MIN_TRT_VERSION:
        have = ".".join(map(str, version))
        raise ConfigError(
            f"TensorRT {have} is too old: Ditto engines need TensorRT >= {MIN_TRT_VERSION[0]}.{MIN_TRT_VERSION[1]} "
            f"(the shipped engines are TensorRT {OFFICIAL_ENGINE_TRT}). Fix: pip install -r requirements-trt.txt."
        )
    return version


_DTYPE_NAMES = (
    ("FLOAT", "float32"), ("HALF", "float16"), ("INT32", "int32"), ("INT64", "int64"), ("INT8", "int8"),
    ("UINT8", "uint8"), ("BOOL", "bool"), ("BF16", "bfloat16"),
)


def dtype_name(trt: Any, dt: Any) -> str:
    """numpy-style name of a ``trt.DataType`` (FP8/INT4 and other packed types are unsupported)."""
    for attr, name in _DTYPE_NAMES:
        if hasattr(trt.DataType, attr) and dt == getattr(trt.DataType, attr):
            return name
    raise ConfigError(f"TensorRT tensor type {dt} is not supported by this runner")


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32, "int64": torch.int64,
            "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool, "bfloat16": torch.bfloat16}[name]


# -- plugins and failure explanations -----------------------------------------------------------


def load_plugin_library(path: str | os.PathLike[str]) -> None:
    """dlopen a TensorRT plugin library with RTLD_GLOBAL so its creators register themselves.

    Loading the same file twice is harmless (the dynamic loader keeps one copy).

    Raises:
        ConfigError: missing file, or a library that does not load (usually
            built against another TensorRT/CUDA major version).
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ConfigError(
            f"TensorRT plugin library not found: {p}. The warp network engine needs the GridSample3D plugin "
            f"({PLUGIN_FILE_NAME}, shipped in ditto_onnx/). Fix: copy it next to the engines or pass "
            "--trt_plugin PATH."
        )
    try:
        ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the TensorRT plugin library {p}: {exc}. It must be built for the installed TensorRT "
            f"and CUDA (the shipped one is for TensorRT {OFFICIAL_ENGINE_TRT}, libnvinfer.so.8). Fix: install "
            "that TensorRT (pip install -r requirements-trt.txt), or rebuild the plugin for this TensorRT and "
            "pass it with --trt_plugin PATH."
        ) from None
    logger.debug("loaded TensorRT plugin library %s", p)


def rebuild_command(engine_dir: str | os.PathLike[str]) -> str:
    """The shell command that rebuilds this engine folder's engines for the local GPU and TensorRT."""
    parent = Path(os.fspath(engine_dir)).parent
    return (f"python -m ditto.tools.build_engines --onnx_dir {parent / 'ditto_onnx'} "
            f"--out_dir {parent / LOCAL_ENGINE_DIR}")


def rebuild_hint(engine_dir: str | os.PathLike[str]) -> str:
    """The fix for engines that do not fit: rebuild, then serve from the rebuilt folder (same cfg pkl:
    the builder writes the official file names), or fall back."""
    parent = Path(os.fspath(engine_dir)).parent
    return (f"rebuild the engines for this GPU and TensorRT with `{rebuild_command(engine_dir)}` and start the "
            f"server with --data_root {parent / LOCAL_ENGINE_DIR} (same --cfg_pkl), or add --fallback to serve "
            "the PyTorch/ONNX checkpoints")


FailureKind = Literal["plugin", "hardware", "version", "unknown"]

_FAILURE_PATTERNS: tuple[tuple[FailureKind, re.Pattern[str]], ...] = (
    ("plugin", re.compile(r"plugin|IPluginCreator|GridSample", re.I)),
    ("hardware", re.compile(r"incompatible device|expecting compute|compute capability|\bSM\b|"
                            r"hardware compat|not supported on this (GPU|device)", re.I)),
    ("version", re.compile(r"version|magic ?tag|serialization assertion|kPLAN_MAGIC|plan file", re.I)),
)


def classify_deserialize_failure(messages: Sequence[str]) -> FailureKind:
    """Why TensorRT refused an engine, from its log lines (first matching cause in order
    plugin, hardware, version; a plugin message mentions a plugin *version*, hence the order)."""
    text = "\n".join(messages)
    for kind, pattern in _FAILURE_PATTERNS:
        if pattern.search(text):
            return kind
    return "unknown"


def explain_deserialize_failure(path: str | os.PathLike[str], messages: Sequence[str], *, trt_version: str,
                                gpu: str) -> str:
    """A ConfigError message for an engine TensorRT would not deserialize: what, why, the fix."""
    p = Path(os.fspath(path))
    kind = classify_deserialize_failure(messages)
    detail = "; ".join(m.strip() for m in messages[-3:]) or "no message from TensorRT"
    what = f"TensorRT {trt_version} cannot deserialize {p} on {gpu}"
    if kind == "plugin":
        why = (f"a plugin it uses is not registered: the warp network needs the GridSample3D plugin "
               f"({PLUGIN_FILE_NAME}) loaded first")
        fix = (f"Fix: put {PLUGIN_FILE_NAME} (from ditto_onnx/) next to the engines or pass --trt_plugin PATH; "
               f"if it is there, it does not match this TensorRT: {rebuild_hint(p.parent)}")
    elif kind == "hardware":
        why = "it was built for another GPU (compute capability / hardware-compatibility level)"
        fix = f"Fix: {rebuild_hint(p.parent)}"
    elif kind == "version":
        why = (f"it was built with another TensorRT version (the shipped Ditto engines are TensorRT "
               f"{OFFICIAL_ENGINE_TRT}), or the file is not a TensorRT engine")
        fix = (f"Fix: {rebuild_hint(p.parent)}; or install TensorRT {OFFICIAL_ENGINE_TRT} for the shipped engines "
               "(pip install -r requirements-trt.txt)")
    else:
        why = "the file is damaged, or it was built for another TensorRT version or GPU"
        fix = f"Fix: {rebuild_hint(p.parent)}"
    return f"{what}: {why} (TensorRT said: {detail}). {fix}."


def _capturing_logger(trt: Any, level: Any) -> Any:
    """A ``trt.ILogger`` that keeps warnings/errors (for explanations) and forwards them to logging."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(level):
                self.messages.append(str(msg))
                logger.debug("TensorRT: %s", msg)

    return _Logger()


def _gpu_description(device: torch.device) -> str:
    try:
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    except Exception:  # noqa: BLE001 - only for a message
        return str(device)


# -- engine -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Binding:
    spec: TensorSpec  # name, role, engine shape (-1 dynamic), engine dtype name
    index: int  # binding index (TRT 8.6 API); position in the IO list (TRT 10)
    torch_dtype: torch.dtype
    profile: ShapeProfile | None  # profile 0 of a dynamic input


def read_io_table(engine: Any, trt: Any, flavor: ApiFlavor) -> tuple[_Binding, ...]:
    """The engine's IO tensors (profile 0), through the API generation ``flavor``."""
    out: list[_Binding] = []
    if flavor == "bindings":
        per_profile = engine.num_bindings // max(1, int(getattr(engine, "num_optimization_profiles", 1)))
        for i in range(per_profile):
            name = engine.get_binding_name(i)
            is_input = bool(engine.binding_is_input(i))
            shape = tuple(int(d) for d in engine.get_binding_shape(i))
            dt = dtype_name(trt, engine.get_binding_dtype(i))
            profile = None
            if is_input and any(d < 0 for d in shape):
                lo, opt, hi = engine.get_profile_shape(0, i)
                profile = ShapeProfile(tuple(lo), tuple(opt), tuple(hi))
            out.append(_Binding(TensorSpec(name, is_input, shape, dt), i, torch_dtype(dt), profile))
    else:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            dt = dtype_name(trt, engine.get_tensor_dtype(name))
            profile = None
            if is_input and any(d < 0 for d in shape):
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                profile = ShapeProfile(tuple(lo), tuple(opt), tuple(hi))
            out.append(_Binding(TensorSpec(name, is_input, shape, dt), i, torch_dtype(dt), profile))
    # Inputs first, then outputs, each in engine order.
    return tuple([b for b in out if b.spec.is_input] + [b for b in out if not b.spec.is_input])


class TensorRTEngine:
    """One deserialized engine file; shared by every runner (context) made from it.

    Args:
        path: the serialized engine.
        device: the CUDA device it runs on.
        plugin_paths: plugin libraries loaded (RTLD_GLOBAL) before deserializing.
        model: Ditto model name for the binding check (default: from the file
            name, see :func:`~.trt_bindings.model_for_file`; unknown names are
            not checked).
        lmdm_dims: LMDM (seq_frames, motion_feat_dim, audio_feat_dim) for the check.

    Raises:
        ConfigError: tensorrt missing or too old, not a CUDA device, unreadable
            or incompatible engine (explained), IO that does not fit the model.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: torch.device | str = "cuda",
                 plugin_paths: Sequence[str | os.PathLike[str]] = (), model: str | None = None,
                 lmdm_dims: tuple[int, int, int] | None = None) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.version = check_tensorrt_version(trt)
        self.flavor: ApiFlavor = api_flavor(self.version)
        self.path = os.fspath(path)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ConfigError(f"TensorRT engine {self.path} needs a CUDA device, got {self.device}")
        if not torch.cuda.is_available():
            raise ConfigError(f"TensorRT engine {self.path} needs a CUDA GPU, but torch sees none "
                              "(a CPU-only torch build, or no NVIDIA driver)")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        for lib in plugin_paths:
            load_plugin_library(lib)
        self._logger = _capturing_logger(trt, trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        try:
            with open(self.path, "rb") as fh:
                blob = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read TensorRT engine {self.path}: {exc}") from None
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self._logger)
            try:
                engine = self.runtime.deserialize_cuda_engine(blob)
            except Exception as exc:  # noqa: BLE001 - some bindings raise instead of returning None
                self._logger.messages.append(str(exc))
                engine = None
        del blob
        if engine is None:
            raise ConfigError(explain_deserialize_failure(
                self.path, self._logger.messages, trt_version=".".join(map(str, self.version)),
                gpu=_gpu_description(self.device)))
        self.engine = engine
        self.bindings = read_io_table(engine, trt, self.flavor)
        self.model = model if model is not None else model_for_file(self.path)
        if self.model is not None:
            self._check_bindings(lmdm_dims)

    def _check_bindings(self, lmdm_dims: tuple[int, int, int] | None) -> None:
        """Names, roles and types must be the model's (the wrappers feed tensors by name); shapes
        that differ are only logged — some aux shapes are not verified against the official
        engines, and a wrong input shape is refused, with the engine's shape, at the first call."""
        assert self.model is not None
        specs = self.specs
        problems = binding_problems(self.model, specs, lmdm_dims=lmdm_dims, shapes=False)
        if problems:
            raise ConfigError(
                f"TensorRT engine {self.path} does not fit the Ditto {self.model!r} model: "
                f"{'; '.join(problems)}. Fix: {rebuild_hint(Path(self.path).parent)}.")
        if self.model == "lmdm" and lmdm_dims is None:
            return  # window/condition sizes come from the cfg pkl; not given here
        for problem in binding_problems(self.model, specs, lmdm_dims=lmdm_dims):
            logger.warning("%s: %s", self.path, problem)

    @property
    def specs(self) -> tuple[TensorSpec, ...]:
        return tuple(b.spec for b in self.bindings)

    def create_context(self) -> Any:
        with torch.cuda.device(self.device):
            ctx = self.engine.create_execution_context()
        if ctx is None:
            raise ConfigError(f"TensorRT could not create an execution context for {self.path} "
                              "(out of GPU memory?)")
        return ctx


# -- runner -------------------------------------------------------------------------------------


def _batch_bound(b: _Binding) -> int | None:
    """Largest axis 0 an input takes: its fixed size, else its profile's maximum (None: no profile)."""
    if b.spec.shape[0] >= 0:
        return b.spec.shape[0]
    return b.profile.max[0] if b.profile is not None else None


class TensorRTRunner:
    """An engine plus ONE execution context: call it from one CUDA stream at a time.

    Args:
        path: the serialized engine (``.engine`` / ``.trt``); or pass ``engine``.
        device: a CUDA device.
        plugin_paths: plugin libraries to load (RTLD_GLOBAL) before
            deserializing, e.g. the GridSample3D plugin of ``warp_network``.
        engine: an already deserialized engine to make a new context on
            (what :meth:`fork` does); anything with ``path``, ``device``,
            ``flavor``, ``bindings`` and ``create_context()`` (tests pass a
            double on the CPU).

    Raises:
        ConfigError: see :class:`TensorRTEngine`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, device: torch.device | str = "cuda",
                 plugin_paths: Sequence[str | os.PathLike[str]] = (), engine: TensorRTEngine | None = None) -> None:
        if engine is None:
            if path is None:
                raise TypeError("TensorRTRunner needs a path or an engine")
            engine = TensorRTEngine(path, device=device, plugin_paths=plugin_paths)
        self._engine = engine
        self.path = engine.path
        self.device = engine.device
        self.context = engine.create_context()
        self._inputs = tuple(b for b in engine.bindings if b.spec.is_input)
        self._outputs = tuple(b for b in engine.bindings if not b.spec.is_input)
        self.input_names: tuple[str, ...] = tuple(b.spec.name for b in self._inputs)
        self.output_names: tuple[str, ...] = tuple(b.spec.name for b in self._outputs)
        self._n_bindings = 1 + max((b.index for b in engine.bindings), default=-1)
        #: Rows one engine call takes: axis 0 of a fixed input, or its profile's maximum.
        self.max_batch: int | None = leading_batch_limit(
            {b.spec.name: _batch_bound(b) for b in self._inputs if b.spec.shape})
        self._shapes: dict[str, tuple[int, ...]] = {}  # last input shapes set on the context
        self._lock = threading.Lock()

    @property
    def engine(self) -> TensorRTEngine:
        return self._engine

    @property
    def api(self) -> ApiFlavor:
        return self._engine.flavor

    def __repr__(self) -> str:
        return f"TensorRTRunner({os.path.basename(self.path)!r}, device={self.device}, api={self.api})"

    def _check_shape(self, b: _Binding, shape: tuple[int, ...]) -> None:
        want = b.spec.shape
        if len(shape) != len(want):
            raise ValueError(f"{self!r}: input {b.spec.name!r} has shape {shape}, expected rank {len(want)} {want}")
        prof = b.profile
        for axis, (d, w) in enumerate(zip(shape, want, strict=True)):
            if w >= 0 and d != w:
                raise ValueError(f"{self!r}: input {b.spec.name!r} has shape {shape}, expected {want}")
            if w < 0 and prof is not None and not prof.min[axis] <= d <= prof.max[axis]:
                raise ValueError(
                    f"{self!r}: input {b.spec.name!r} axis {axis} is {d}, outside the engine's profile "
                    f"[{prof.min[axis]}, {prof.max[axis]}]")

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        """One engine call, or one per slice of :attr:`max_batch` rows for a larger batch.

        Raises:
            TypeError: inputs not named as the engine's.
            ValueError: a shape the engine (or its profile) does not take.
            RuntimeError: TensorRT failed.
        """
        if set(inputs) != set(self.input_names):
            raise TypeError(f"{self!r} takes inputs {list(self.input_names)}, got {sorted(inputs)}")
        return run_in_batches(self._run, inputs, max_batch=self.max_batch)

    def _run(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        on_gpu = self.device.type == "cuda"  # always, except for test doubles of the engine
        guard = torch.cuda.device(self.device) if on_gpu else contextlib.nullcontext()
        with self._lock, guard:
            ctx = self.context
            keep: list[Tensor] = []
            for b in self._inputs:
                t = inputs[b.spec.name].detach().to(self.device, b.torch_dtype).contiguous()
                shape = tuple(t.shape)
                if self._shapes.get(b.spec.name) != shape:
                    self._check_shape(b, shape)
                    ok = (ctx.set_binding_shape(b.index, shape) if self.api == "bindings"
                          else ctx.set_input_shape(b.spec.name, shape))
                    if not ok:
                        raise ValueError(f"{self!r}: TensorRT refused shape {shape} for input {b.spec.name!r}")
                    self._shapes[b.spec.name] = shape
                keep.append(t)
            out: dict[str, Tensor] = {}
            for b in self._outputs:
                shape = tuple(int(d) for d in (ctx.get_binding_shape(b.index) if self.api == "bindings"
                                               else ctx.get_tensor_shape(b.spec.name)))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"{self!r}: output {b.spec.name!r} has a data-dependent shape {shape} "
                                       "(unsupported)")
                out[b.spec.name] = torch.empty(shape, dtype=b.torch_dtype, device=self.device)
            stream = torch.cuda.current_stream(self.device).cuda_stream if on_gpu else 0
            if self.api == "bindings":
                ptrs = [0] * self._n_bindings
                for b, t in zip(self._inputs, keep, strict=True):
                    ptrs[b.index] = t.data_ptr()
                for b in self._outputs:
                    ptrs[b.index] = out[b.spec.name].data_ptr()
                ok = ctx.execute_async_v2(bindings=ptrs, stream_handle=stream)
            else:
                for b, t in zip(self._inputs, keep, strict=True):
                    ctx.set_tensor_address(b.spec.name, t.data_ptr())
                for b in self._outputs:
                    ctx.set_tensor_address(b.spec.name, out[b.spec.name].data_ptr())
                ok = ctx.execute_async_v3(stream)
            if not ok:
                raise RuntimeError(f"{self!r}: TensorRT execution failed")
            # Temporaries in `keep` were allocated on this stream: the caching allocator hands
            # their memory only to work queued after this launch.
            del keep
        return out


__all__ = [
    "LOCAL_ENGINE_DIR", "MIN_TRT_VERSION", "OFFICIAL_ENGINE_TRT", "PLUGIN_FILE_NAME", "TensorRTEngine",
    "TensorRTRunner", "api_flavor", "check_tensorrt_version", "classify_deserialize_failure", "dtype_name",
    "explain_deserialize_failure", "import_tensorrt", "load_plugin_library", "read_io_table",
    "rebuild_command", "rebuild_hint", "tensorrt_version",
]
