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

The API generation is chosen once, when the engine is loaded (:data:`TRT_APIS`,
keyed by :func:`api_flavor`): :class:`BindingsApi` and :class:`TensorsApi` are the
only code that differs between the two, behind the small :class:`TrtApi`
interface (read the IO table; set an input shape, read an output shape, bind an
address, execute). The runner's per-call code does not look at the version.

Engines that use the GridSample3D plugin (``warp_network``) need the plugin
library loaded (``ctypes``, ``RTLD_GLOBAL``) before they are deserialized:
pass it in ``plugin_paths``.

When this machine cannot run an engine (no or too old ``tensorrt``, no CUDA
device, plugin missing or not loadable, TensorRT refused the file, IO that does
not fit the model), this module raises :class:`TensorRTUnusable`: a
:class:`~ditto.errors.ConfigError` whose ``failure`` holds the facts (one of the
dataclasses of :data:`TrtFailure`). The words — why, and the command that fixes
it — are :func:`ditto.backends.talkinghead.preflight.diagnose`'s; this module
writes none.

``tensorrt`` is imported lazily; without it :class:`TensorRTRunner` raises
:class:`TensorRTUnusable` (:class:`TensorRTMissing`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias

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

#: Oldest TensorRT this runner accepts (hardware-compatible engines and plugin serialization).
MIN_TRT_VERSION = (8, 6)
#: File name of the grid-sample plugin in ``ditto_onnx`` (and next to locally built engines).
PLUGIN_FILE_NAME = "libgrid_sample_3d_plugin.so"

ApiFlavor = Literal["bindings", "tensors"]


# -- why an engine cannot run here: the facts (preflight.diagnose words them) -------------------


@dataclass(frozen=True, slots=True)
class TensorRTMissing:
    """``import tensorrt`` failed."""

    detail: str  # the ImportError's text


@dataclass(frozen=True, slots=True)
class TensorRTTooOld:
    """The installed TensorRT is older than :data:`MIN_TRT_VERSION`."""

    version: tuple[int, ...]  # the installed one, see tensorrt_version()


@dataclass(frozen=True, slots=True)
class NoCudaDevice:
    """The engine was asked to run on a non-CUDA device, or torch sees no CUDA GPU."""

    path: str  # the engine file
    device: str  # the device asked for, e.g. "cpu"
    gpu_visible: bool  # False: torch.cuda.is_available() is False


@dataclass(frozen=True, slots=True)
class PluginMissing:
    """A plugin library to load is not a file."""

    path: str


@dataclass(frozen=True, slots=True)
class PluginUnloadable:
    """dlopen refused a plugin library (usually built for another TensorRT/CUDA major version)."""

    path: str
    detail: str  # the OSError's text


@dataclass(frozen=True, slots=True)
class EngineRejected:
    """TensorRT would not deserialize an engine file."""

    path: str
    trt_version: str  # the installed TensorRT, dotted
    gpu: str  # gpu_description() of the device
    messages: tuple[str, ...]  # TensorRT's warnings/errors while loading, oldest first


@dataclass(frozen=True, slots=True)
class EngineMismatch:
    """An engine's IO tensors are not those of the Ditto model its file name says it is."""

    path: str
    model: str  # see trt_bindings.model_for_file()
    problems: tuple[str, ...]  # trt_bindings.binding_problems(..., shapes=False)


TrtFailure: TypeAlias = (
    TensorRTMissing | TensorRTTooOld | NoCudaDevice | PluginMissing | PluginUnloadable | EngineRejected | EngineMismatch
)


class TensorRTUnusable(ConfigError):
    """This machine cannot run a TensorRT engine. ``failure`` says why (facts only); the message is
    :func:`ditto.backends.talkinghead.preflight.diagnose` of it: what, why, the fix.

    Being a :class:`~ditto.errors.ConfigError`, it ends startup with that message.
    """

    def __init__(self, failure: TrtFailure) -> None:
        # preflight imports this module, so it is imported here, when something has failed.
        from ditto.backends.talkinghead.preflight import diagnose

        super().__init__(diagnose(failure))
        self.failure = failure


# -- tensorrt module ----------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """``import tensorrt``, or :class:`TensorRTUnusable` (:class:`TensorRTMissing`)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnusable(TensorRTMissing(str(exc))) from None
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
    """The installed version; :class:`TensorRTUnusable` (:class:`TensorRTTooOld`) below
    :data:`MIN_TRT_VERSION`."""
    version = tensorrt_version(trt)
    if version[:2] < MIN_TRT_VERSION:
        raise TensorRTUnusable(TensorRTTooOld(version))
    return version


_DTYPE_NAMES = (
    ("FLOAT", "float32"),
    ("HALF", "float16"),
    ("INT32", "int32"),
    ("INT64", "int64"),
    ("INT8", "int8"),
    ("UINT8", "uint8"),
    ("BOOL", "bool"),
    ("BF16", "bfloat16"),
)


def dtype_name(trt: Any, dt: Any) -> str:
    """numpy-style name of a ``trt.DataType`` (FP8/INT4 and other packed types are unsupported)."""
    for attr, name in _DTYPE_NAMES:
        if hasattr(trt.DataType, attr) and dt == getattr(trt.DataType, attr):
            return name
    raise ConfigError(f"TensorRT tensor type {dt} is not supported by this runner")


def torch_dtype(name: str) -> torch.dtype:
    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "int32": torch.int32,
        "int64": torch.int64,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "bool": torch.bool,
        "bfloat16": torch.bfloat16,
    }[name]


# -- plugins, TensorRT's log, the GPU -----------------------------------------------------------


def load_plugin_library(path: str | os.PathLike[str]) -> None:
    """dlopen a TensorRT plugin library with RTLD_GLOBAL so its creators register themselves.

    Loading the same file twice is harmless (the dynamic loader keeps one copy).

    Raises:
        TensorRTUnusable: missing file (:class:`PluginMissing`), or a library that
            does not load (:class:`PluginUnloadable`).
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise TensorRTUnusable(PluginMissing(p))
    try:
        ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise TensorRTUnusable(PluginUnloadable(p, str(exc))) from None
    logger.debug("loaded TensorRT plugin library %s", p)


def _capturing_logger(trt: Any, level: Any) -> Any:
    """A ``trt.ILogger`` that keeps warnings/errors (the facts of :class:`EngineRejected`) and
    forwards them to logging."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(level):
                self.messages.append(str(msg))
                logger.debug("TensorRT: %s", msg)

    return _Logger()


def gpu_description(device: torch.device) -> str:
    """``"NVIDIA H200 (sm_90)"``: the device's name and compute capability (else ``str(device)``)."""
    try:
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    except Exception:  # noqa: BLE001 - only for a message
        return str(device)


# -- the two API generations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Binding:
    spec: TensorSpec  # name, role, engine shape (-1 dynamic), engine dtype name
    index: int  # binding index (TRT 8.6 API); position in the IO list (TRT 10)
    torch_dtype: torch.dtype
    profile: ShapeProfile | None  # profile 0 of a dynamic input


def _binding(
    trt: Any,
    index: int,
    name: str,
    is_input: bool,
    shape: Sequence[int],
    trt_dtype: Any,
    profile_shapes: Callable[[], Sequence[Sequence[int]]],
) -> _Binding:
    """One IO tensor; ``profile_shapes()`` (min, opt, max of profile 0) is asked for dynamic inputs only."""
    shape = tuple(int(d) for d in shape)
    dt = dtype_name(trt, trt_dtype)
    profile = None
    if is_input and any(d < 0 for d in shape):
        lo, opt, hi = profile_shapes()
        profile = ShapeProfile(tuple(lo), tuple(opt), tuple(hi))
    return _Binding(TensorSpec(name, is_input, shape, dt), index, torch_dtype(dt), profile)


class TrtApi(ABC):
    """One TensorRT API generation, over ONE execution context.

    The runner's per-call sequence, the same for every generation: for each input
    whose shape changed, :meth:`set_input_shape`; :meth:`bind` each input's
    address; for each output, :meth:`output_shape` (valid once every input shape
    is set), allocate, :meth:`bind`; then :meth:`execute` on a CUDA stream.
    Memory is the caller's (torch's) throughout.
    """

    #: Key of this generation in :data:`TRT_APIS` (what :func:`api_flavor` returns).
    flavor: ClassVar[ApiFlavor]

    def __init__(self, context: Any, bindings: Sequence[_Binding]) -> None:
        self.context = context

    @classmethod
    @abstractmethod
    def io_table(cls, engine: Any, trt: Any) -> list[_Binding]:
        """The engine's IO tensors (optimization profile 0), in engine order."""

    @abstractmethod
    def set_input_shape(self, b: _Binding, shape: tuple[int, ...]) -> bool:
        """Set an input's shape on the context; False: TensorRT refused it."""

    @abstractmethod
    def output_shape(self, b: _Binding) -> tuple[int, ...]:
        """An output's shape for the input shapes set (-1 on an axis: data-dependent)."""

    @abstractmethod
    def bind(self, b: _Binding, address: int) -> None:
        """Give a tensor's device address for the next :meth:`execute`."""

    @abstractmethod
    def execute(self, stream_handle: int) -> bool:
        """Queue one inference on the stream; False: TensorRT failed."""


class BindingsApi(TrtApi):
    """TensorRT 8.x: binding indices; addresses go to ``execute_async_v2`` as one pointer list."""

    flavor = "bindings"

    def __init__(self, context: Any, bindings: Sequence[_Binding]) -> None:
        super().__init__(context, bindings)
        self._addresses = [0] * (1 + max((b.index for b in bindings), default=-1))

    @classmethod
    def io_table(cls, engine: Any, trt: Any) -> list[_Binding]:
        per_profile = engine.num_bindings // max(1, int(getattr(engine, "num_optimization_profiles", 1)))
        return [
            _binding(
                trt,
                i,
                engine.get_binding_name(i),
                bool(engine.binding_is_input(i)),
                engine.get_binding_shape(i),
                engine.get_binding_dtype(i),
                functools.partial(engine.get_profile_shape, 0, i),
            )
            for i in range(per_profile)
        ]

    def set_input_shape(self, b: _Binding, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_binding_shape(b.index, shape))

    def output_shape(self, b: _Binding) -> tuple[int, ...]:
        return tuple(int(d) for d in self.context.get_binding_shape(b.index))

    def bind(self, b: _Binding, address: int) -> None:
        self._addresses[b.index] = address

    def execute(self, stream_handle: int) -> bool:
        return bool(self.context.execute_async_v2(bindings=self._addresses, stream_handle=stream_handle))


class TensorsApi(TrtApi):
    """TensorRT ≥ 10: named tensors; addresses set on the context, ``execute_async_v3``."""

    flavor = "tensors"

    @classmethod
    def io_table(cls, engine: Any, trt: Any) -> list[_Binding]:
        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append(
                _binding(
                    trt,
                    i,
                    name,
                    engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    engine.get_tensor_shape(name),
                    engine.get_tensor_dtype(name),
                    functools.partial(engine.get_tensor_profile_shape, name, 0),
                )
            )
        return out

    def set_input_shape(self, b: _Binding, shape: tuple[int, ...]) -> bool:
        return bool(self.context.set_input_shape(b.spec.name, shape))

    def output_shape(self, b: _Binding) -> tuple[int, ...]:
        return tuple(int(d) for d in self.context.get_tensor_shape(b.spec.name))

    def bind(self, b: _Binding, address: int) -> None:
        self.context.set_tensor_address(b.spec.name, address)

    def execute(self, stream_handle: int) -> bool:
        return bool(self.context.execute_async_v3(stream_handle))


#: API generation → its adapter (see :func:`api_flavor`).
TRT_APIS: Mapping[ApiFlavor, type[TrtApi]] = MappingProxyType({"bindings": BindingsApi, "tensors": TensorsApi})


def read_io_table(engine: Any, trt: Any, flavor: ApiFlavor) -> tuple[_Binding, ...]:
    """The engine's IO tensors (profile 0), through the API generation ``flavor``: inputs first,
    then outputs, each in engine order."""
    out = TRT_APIS[flavor].io_table(engine, trt)
    return tuple([b for b in out if b.spec.is_input] + [b for b in out if not b.spec.is_input])


# -- engine -------------------------------------------------------------------------------------


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
        TensorRTUnusable: tensorrt missing or too old, not a CUDA device, a
            plugin that does not load, an engine TensorRT refuses, IO that does
            not fit the model (see :data:`TrtFailure`).
        ConfigError: an unreadable file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: torch.device | str = "cuda",
        plugin_paths: Sequence[str | os.PathLike[str]] = (),
        model: str | None = None,
        lmdm_dims: tuple[int, int, int] | None = None,
    ) -> None:
        trt = import_tensorrt()
        self.trt = trt
        self.version = check_tensorrt_version(trt)
        self.flavor: ApiFlavor = api_flavor(self.version)
        #: The adapter every runner of this engine drives its context through.
        self.api: type[TrtApi] = TRT_APIS[self.flavor]
        self.path = os.fspath(path)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise TensorRTUnusable(NoCudaDevice(self.path, str(self.device), gpu_visible=True))
        if not torch.cuda.is_available():
            raise TensorRTUnusable(NoCudaDevice(self.path, str(self.device), gpu_visible=False))
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
            raise TensorRTUnusable(
                EngineRejected(
                    self.path,
                    ".".join(map(str, self.version)),
                    gpu_description(self.device),
                    tuple(self._logger.messages),
                )
            )
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
            raise TensorRTUnusable(EngineMismatch(self.path, self.model, tuple(problems)))
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
            raise ConfigError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
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
            (each runner has its own context); anything with ``path``,
            ``device``, ``flavor``, ``bindings`` and ``create_context()`` (tests
            pass a double on the CPU). ``flavor`` picks the :class:`TrtApi`
            adapter, once.

    Raises:
        ConfigError: see :class:`TensorRTEngine`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        device: torch.device | str = "cuda",
        plugin_paths: Sequence[str | os.PathLike[str]] = (),
        engine: TensorRTEngine | None = None,
    ) -> None:
        if engine is None:
            if path is None:
                raise TypeError("TensorRTRunner needs a path or an engine")
            engine = TensorRTEngine(path, device=device, plugin_paths=plugin_paths)
        self._engine = engine
        self.path = engine.path
        self.device = engine.device
        self.context = engine.create_context()
        self._api: TrtApi = TRT_APIS[engine.flavor](self.context, engine.bindings)
        self._inputs = tuple(b for b in engine.bindings if b.spec.is_input)
        self._outputs = tuple(b for b in engine.bindings if not b.spec.is_input)
        self.input_names: tuple[str, ...] = tuple(b.spec.name for b in self._inputs)
        self.output_names: tuple[str, ...] = tuple(b.spec.name for b in self._outputs)
        #: Rows one engine call takes: axis 0 of a fixed input, or its profile's maximum.
        self.max_batch: int | None = leading_batch_limit(
            {b.spec.name: _batch_bound(b) for b in self._inputs if b.spec.shape}
        )
        self._shapes: dict[str, tuple[int, ...]] = {}  # last input shapes set on the context
        self._lock = threading.Lock()

    @property
    def engine(self) -> TensorRTEngine:
        return self._engine

    @property
    def api(self) -> ApiFlavor:
        return self._api.flavor

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
                    f"[{prof.min[axis]}, {prof.max[axis]}]"
                )

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
            api = self._api
            keep: list[Tensor] = []
            for b in self._inputs:
                t = inputs[b.spec.name].detach().to(self.device, b.torch_dtype).contiguous()
                shape = tuple(t.shape)
                if self._shapes.get(b.spec.name) != shape:
                    self._check_shape(b, shape)
                    if not api.set_input_shape(b, shape):
                        raise ValueError(f"{self!r}: TensorRT refused shape {shape} for input {b.spec.name!r}")
                    self._shapes[b.spec.name] = shape
                keep.append(t)
            out: dict[str, Tensor] = {}
            for b in self._outputs:
                shape = api.output_shape(b)
                if any(d < 0 for d in shape):
                    raise RuntimeError(
                        f"{self!r}: output {b.spec.name!r} has a data-dependent shape {shape} (unsupported)"
                    )
                out[b.spec.name] = torch.empty(shape, dtype=b.torch_dtype, device=self.device)
            for b, t in zip(self._inputs, keep, strict=True):
                api.bind(b, t.data_ptr())
            for b in self._outputs:
                api.bind(b, out[b.spec.name].data_ptr())
            stream = torch.cuda.current_stream(self.device).cuda_stream if on_gpu else 0
            if not api.execute(stream):
                raise RuntimeError(f"{self!r}: TensorRT execution failed")
            # Temporaries in `keep` were allocated on this stream: the caching allocator hands
            # their memory only to work queued after this launch.
            del keep
        return out


__all__ = [
    "MIN_TRT_VERSION",
    "PLUGIN_FILE_NAME",
    "TRT_APIS",
    "BindingsApi",
    "EngineMismatch",
    "EngineRejected",
    "NoCudaDevice",
    "PluginMissing",
    "PluginUnloadable",
    "TensorRTEngine",
    "TensorRTMissing",
    "TensorRTRunner",
    "TensorRTTooOld",
    "TensorRTUnusable",
    "TensorsApi",
    "TrtApi",
    "TrtFailure",
    "api_flavor",
    "check_tensorrt_version",
    "dtype_name",
    "gpu_description",
    "import_tensorrt",
    "load_plugin_library",
    "read_io_table",
    "tensorrt_version",
]
