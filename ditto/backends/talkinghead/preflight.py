"""Startup checks for the TensorRT checkpoints, and the ``--fallback`` to PyTorch/ONNX.

A TensorRT tree (``ditto_trt_Ampere_Plus`` + ``v0.4_hubert_cfg_trt*.pkl``)
fails in many ways that have nothing to do with the models: no ``tensorrt``
package, a CPU-only torch, a pre-Ampere GPU for the hardware-compatible
engines, engines of another TensorRT version, the GridSample3D plugin missing.
:func:`check_trt_tree` finds these before any model is loaded and raises ONE
:class:`~ditto.errors.ConfigError` that says what is wrong, why, and the
command that fixes it; the server prints it and exits non-zero.

The checks, in order (each one only if the cfg selects ``.engine``/``.trt`` files):

1. every engine file named by the pkl exists;
2. ``tensorrt`` imports and is ≥ 8.6;
3. a CUDA GPU is visible to torch and ``--device`` is not ``cpu``;
4. compute capability ≥ 8.0 when the engine folder is a hardware-compatible
   ``*Ampere_Plus*`` build (docs/pipeline.md §2: ``--hardware-compatibility-level=Ampere_Plus``);
5. the GridSample3D plugin is found (``--trt_plugin``, next to the engines, or
   ``ditto_onnx/`` beside them) and loads;
6. the smallest engine deserializes on this GPU and has the expected tensors.

Every diagnosis of why an engine cannot run here is written in this module.
The runner (:mod:`~ditto.backends.talkinghead.runtime.tensorrt_runner`) only
states facts: it raises :class:`~ditto.backends.talkinghead.runtime.tensorrt_runner.TensorRTUnusable`
carrying one of the dataclasses of ``TrtFailure`` (TensorRT missing or too old,
no CUDA device, plugin missing or not loadable, the engine refused with
TensorRT's log lines, IO that does not fit the model), and its message is
:func:`diagnose` of that: what, why, and the command that fixes it — also when
the backend loads the other engines after these checks.

With ``--fallback``, :func:`fallback_tree` picks the ``ditto_pytorch`` (else
``ditto_onnx``) tree beside the engine folder and writes a cfg pkl for it that
keeps the requested pkl's setup options (so the online pkl stays online).
:func:`load_checked_cfg` strings the two together for the backend.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import torch

from ditto.backends.talkinghead.config import (
    CFG_PKL_NAMES,
    DittoCfg,
    dump_cfg_pkl,
    load_cfg,
    onnx_cfg_dict,
    read_cfg_dict,
)
from ditto.backends.talkinghead.runtime.tensorrt_runner import (
    MIN_TRT_VERSION,
    PLUGIN_FILE_NAME,
    EngineMismatch,
    EngineRejected,
    NoCudaDevice,
    PluginMissing,
    PluginUnloadable,
    TensorRTEngine,
    TensorRTMissing,
    TensorRTTooOld,
    TrtFailure,
    check_tensorrt_version,
    gpu_description,
    import_tensorrt,
    load_plugin_library,
)
from ditto.backends.talkinghead.runtime.trt_bindings import model_for_file
from ditto.errors import ConfigError

logger = logging.getLogger(__name__)

#: Minimum compute capability of hardware-compatible ("Ampere_Plus") engines.
AMPERE = (8, 0)
PYTORCH_DIR = "ditto_pytorch"
ONNX_DIR = "ditto_onnx"
#: TensorRT version the shipped ``ditto_trt_Ampere_Plus`` engines were built with (docs/pipeline.md §2).
OFFICIAL_ENGINE_TRT = "8.6.1"
#: Folder name suggested for engines rebuilt on this machine.
LOCAL_ENGINE_DIR = "ditto_trt_local"


class TrtSettings(Protocol):
    """The settings this module reads (``ditto.settings.Settings`` has them; read-only, as it is frozen)."""

    @property
    def data_root(self) -> Path | None: ...
    @property
    def cfg_pkl(self) -> Path | None: ...
    @property
    def device(self) -> str: ...
    @property
    def trt_plugin(self) -> Path | None: ...
    @property
    def fallback(self) -> bool: ...


# -- what the cfg asks for ----------------------------------------------------------------------


def trt_model_files(cfg: DittoCfg) -> dict[str, Path]:
    """Every TensorRT engine the cfg names, by section/model name (blaze_face, face_mesh included)."""
    files = {name: m.model_path for name, m in cfg.model_cfgs().items() if m.engine == "tensorrt"}
    lm = cfg.landmark478
    if lm.engine == "tensorrt":
        if lm.blaze_face_model_path is not None:
            files["blaze_face"] = lm.blaze_face_model_path
        if lm.face_mesh_model_path is not None:
            files["face_mesh"] = lm.face_mesh_model_path
    return files


def uses_tensorrt(cfg: DittoCfg) -> bool:
    return bool(trt_model_files(cfg))


def is_hardware_compatible_tree(engine_dir: Path) -> bool:
    """The official folder name says the engines were built with ``Ampere_Plus`` compatibility."""
    return "ampere_plus" in engine_dir.name.lower()


def plugin_candidates(cfg: DittoCfg, settings: TrtSettings) -> list[Path]:
    """Where the GridSample3D plugin is looked for, in order."""
    if settings.trt_plugin is not None:
        return [Path(settings.trt_plugin)]
    warp_dir = cfg.warp_network.model_path.parent
    out = [
        warp_dir / PLUGIN_FILE_NAME,
        cfg.data_root / PLUGIN_FILE_NAME,
        cfg.data_root.parent / ONNX_DIR / PLUGIN_FILE_NAME,
    ]
    return list(dict.fromkeys(out))


def find_trt_plugin(cfg: DittoCfg, settings: TrtSettings) -> Path | None:
    """The first existing :func:`plugin_candidates` entry, or None."""
    return next((p for p in plugin_candidates(cfg, settings) if p.is_file()), None)


def trt_plugin_paths(cfg: DittoCfg, settings: TrtSettings) -> tuple[Path, ...]:
    """Plugin libraries to pass as ``plugin_paths`` when loading the warp network engine (may be empty)."""
    if cfg.warp_network.engine != "tensorrt":
        return ()
    found = find_trt_plugin(cfg, settings)
    return (found,) if found is not None else ()


def _lmdm_dims(cfg: DittoCfg) -> tuple[int, int, int]:
    a2m = cfg.audio2motion
    return (a2m.seq_frames, a2m.motion_feat_dim, a2m.audio_feat_dim)


# -- why an engine cannot run here: the words ---------------------------------------------------


def rebuild_command(engine_dir: str | os.PathLike[str]) -> str:
    """The shell command that rebuilds this engine folder's engines for the local GPU and TensorRT."""
    parent = Path(os.fspath(engine_dir)).parent
    return (
        f"python -m ditto.tools.build_engines --onnx_dir {parent / 'ditto_onnx'} --out_dir {parent / LOCAL_ENGINE_DIR}"
    )


def rebuild_hint(engine_dir: str | os.PathLike[str]) -> str:
    """The fix for engines that do not fit: rebuild, then serve from the rebuilt folder (same cfg pkl:
    the builder writes the official file names), or fall back."""
    parent = Path(os.fspath(engine_dir)).parent
    return (
        f"rebuild the engines for this GPU and TensorRT with `{rebuild_command(engine_dir)}` and start the "
        f"server with --data_root {parent / LOCAL_ENGINE_DIR} (same --cfg_pkl), or add --fallback to serve "
        "the PyTorch/ONNX checkpoints"
    )


FailureKind = Literal["plugin", "hardware", "version", "unknown"]

_FAILURE_PATTERNS: tuple[tuple[FailureKind, re.Pattern[str]], ...] = (
    ("plugin", re.compile(r"plugin|IPluginCreator|GridSample", re.I)),
    (
        "hardware",
        re.compile(
            r"incompatible device|expecting compute|compute capability|\bSM\b|"
            r"hardware compat|not supported on this (GPU|device)",
            re.I,
        ),
    ),
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


def explain_deserialize_failure(
    path: str | os.PathLike[str], messages: Sequence[str], *, trt_version: str, gpu: str
) -> str:
    """The message for an engine TensorRT would not deserialize: what, why, the fix."""
    p = Path(os.fspath(path))
    kind = classify_deserialize_failure(messages)
    detail = "; ".join(m.strip() for m in messages[-3:]) or "no message from TensorRT"
    what = f"TensorRT {trt_version} cannot deserialize {p} on {gpu}"
    if kind == "plugin":
        why = (
            f"a plugin it uses is not registered: the warp network needs the GridSample3D plugin "
            f"({PLUGIN_FILE_NAME}) loaded first"
        )
        fix = (
            f"Fix: put {PLUGIN_FILE_NAME} (from ditto_onnx/) next to the engines or pass --trt_plugin PATH; "
            f"if it is there, it does not match this TensorRT: {rebuild_hint(p.parent)}"
        )
    elif kind == "hardware":
        why = "it was built for another GPU (compute capability / hardware-compatibility level)"
        fix = f"Fix: {rebuild_hint(p.parent)}"
    elif kind == "version":
        why = (
            f"it was built with another TensorRT version (the shipped Ditto engines are TensorRT "
            f"{OFFICIAL_ENGINE_TRT}), or the file is not a TensorRT engine"
        )
        fix = (
            f"Fix: {rebuild_hint(p.parent)}; or install TensorRT {OFFICIAL_ENGINE_TRT} for the shipped engines "
            "(pip install -r requirements-trt.txt)"
        )
    else:
        why = "the file is damaged, or it was built for another TensorRT version or GPU"
        fix = f"Fix: {rebuild_hint(p.parent)}"
    return f"{what}: {why} (TensorRT said: {detail}). {fix}."


def diagnose(failure: TrtFailure) -> str:
    """The user-facing message for a runner's :data:`~ditto.backends.talkinghead.runtime.tensorrt_runner.TrtFailure`:
    what is wrong, why, and the command that fixes it (the message of ``TensorRTUnusable``)."""
    match failure:
        case TensorRTMissing(detail=detail):
            return (
                "TensorRT engines (.engine/.trt) need the 'tensorrt' Python package, which is not importable "
                f"here ({detail}). Fix: pip install -r requirements-trt.txt (TensorRT {OFFICIAL_ENGINE_TRT} for "
                "the shipped engines) on a machine with an NVIDIA GPU, or serve the PyTorch/ONNX checkpoints "
                "instead (add --fallback, or pass --data_root ../checkpoints/ditto_pytorch "
                "--cfg_pkl ../checkpoints/ditto_cfg/v0.4_hubert_cfg_pytorch.pkl)."
            )
        case TensorRTTooOld(version=version):
            have = ".".join(map(str, version))
            return (
                f"TensorRT {have} is too old: Ditto engines need TensorRT >= "
                f"{MIN_TRT_VERSION[0]}.{MIN_TRT_VERSION[1]} (the shipped engines are TensorRT "
                f"{OFFICIAL_ENGINE_TRT}). Fix: pip install -r requirements-trt.txt."
            )
        case NoCudaDevice(path=path, device=device, gpu_visible=True):
            return f"TensorRT engine {path} needs a CUDA device, got {device}"
        case NoCudaDevice(path=path):
            return (
                f"TensorRT engine {path} needs a CUDA GPU, but torch sees none "
                "(a CPU-only torch build, or no NVIDIA driver)"
            )
        case PluginMissing(path=path):
            return (
                f"TensorRT plugin library not found: {path}. The warp network engine needs the GridSample3D "
                f"plugin ({PLUGIN_FILE_NAME}, shipped in ditto_onnx/). Fix: copy it next to the engines or pass "
                "--trt_plugin PATH."
            )
        case PluginUnloadable(path=path, detail=detail):
            return (
                f"cannot load the TensorRT plugin library {path}: {detail}. It must be built for the installed "
                f"TensorRT and CUDA (the shipped one is for TensorRT {OFFICIAL_ENGINE_TRT}, libnvinfer.so.8). "
                "Fix: install that TensorRT (pip install -r requirements-trt.txt), or rebuild the plugin for "
                "this TensorRT and pass it with --trt_plugin PATH."
            )
        case EngineRejected(path=path, trt_version=trt_version, gpu=gpu, messages=messages):
            return explain_deserialize_failure(path, messages, trt_version=trt_version, gpu=gpu)
        case EngineMismatch(path=path, model=model, problems=problems):
            return (
                f"TensorRT engine {path} does not fit the Ditto {model!r} model: {'; '.join(problems)}. "
                f"Fix: {rebuild_hint(Path(path).parent)}."
            )
    raise TypeError(f"not a TensorRT failure: {failure!r}")


# -- the checks ---------------------------------------------------------------------------------


def check_trt_tree(cfg: DittoCfg, settings: TrtSettings) -> None:
    """Check that this machine can run the cfg's TensorRT engines (no-op for other cfgs).

    Args:
        cfg: the parsed cfg (``load_cfg(..., check_files=False)`` is enough:
            missing engine files are reported here, with the fix).
        settings: server settings (``device``, ``trt_plugin``).

    Raises:
        ConfigError: one message — what, why, and the command that fixes it.
    """
    files = trt_model_files(cfg)
    if not files:
        return
    engine_dir = cfg.warp_network.model_path.parent if "warp_network" in files else next(iter(files.values())).parent
    where = f"{cfg.path.name} selects TensorRT engines in {engine_dir}"

    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(
            f"{where}, but {len(missing)} of them are missing: {', '.join(missing)}. Fix: "
            f"{rebuild_hint(engine_dir)} (build_engines --models NAME builds only the missing ones)"
        )

    try:
        trt = import_tensorrt()
        version = check_tensorrt_version(trt)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    version_str = ".".join(map(str, version))

    device = settings.device
    if device == "cpu":
        raise ConfigError(
            f"{where}, but --device cpu was given: TensorRT runs on an NVIDIA GPU only. Fix: drop --device cpu, "
            "or add --fallback to serve the PyTorch/ONNX checkpoints on the CPU"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{where}, but torch sees no CUDA GPU (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}): TensorRT needs one. Fix: install a CUDA build of torch and check "
            "the NVIDIA driver (nvidia-smi), or add --fallback to serve the PyTorch/ONNX checkpoints"
        )
    gpu = torch.device("cuda" if device == "auto" else device)
    if gpu.index is None:
        gpu = torch.device("cuda", torch.cuda.current_device())
    cc = torch.cuda.get_device_capability(gpu)
    gpu_name = gpu_description(gpu)
    if is_hardware_compatible_tree(engine_dir) and tuple(cc) < AMPERE:
        raise ConfigError(
            f"{where}, built for Ampere or newer GPUs (hardware-compatibility level Ampere_Plus, compute "
            f"capability >= {AMPERE[0]}.{AMPERE[1]}), but this GPU is {gpu_name}. Fix: {rebuild_hint(engine_dir)}"
        )

    plugins: tuple[Path, ...] = ()
    if "warp_network" in files:
        plugin = find_trt_plugin(cfg, settings)
        if plugin is None:
            looked = ", ".join(str(p) for p in plugin_candidates(cfg, settings))
            raise ConfigError(
                f"{where}; the warp network engine needs the GridSample3D plugin {PLUGIN_FILE_NAME}, not found "
                f"(looked at {looked}). Fix: copy it from ditto_onnx/ next to the engines, or pass --trt_plugin PATH"
            )
        try:
            load_plugin_library(plugin)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        plugins = (plugin,)

    probe = min(files.values(), key=lambda p: p.stat().st_size)
    logger.info("TensorRT %s on %s: probing %s", version_str, gpu_name, probe.name)
    engine = TensorRTEngine(
        probe, device=gpu, plugin_paths=plugins, model=model_for_file(probe), lmdm_dims=_lmdm_dims(cfg)
    )
    del engine


# -- fallback -----------------------------------------------------------------------------------


def _derived_pkl_path(cfg_pkl: Path, tree: Path) -> Path:
    key = hashlib.sha256(f"{cfg_pkl.resolve()}|{tree.resolve()}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "ditto-fallback" / f"{cfg_pkl.stem}_{tree.name}_{key}.pkl"


def _custom_onnx_ops(path: Path) -> list[str]:
    """Op types of ``path`` outside the standard ONNX domains (the official warp net's plugin op)."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a base requirement of the Ditto backend
        return []
    model = onnx.load(str(path), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})


def fallback_tree(data_root: str | os.PathLike[str], cfg_pkl: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The PyTorch (else ONNX) checkpoints beside a TensorRT tree, as ``(data_root, cfg_pkl)``.

    ``ditto_pytorch/`` is used with the models of ``ditto_cfg/v0.4_hubert_cfg_pytorch.pkl``;
    else ``ditto_onnx/`` with the TensorRT pkl's engine names turned into ONNX names
    (:func:`~ditto.backends.talkinghead.config.onnx_cfg_dict`). Either way the returned
    pkl — written under the temp folder, the originals are never touched — keeps
    the requested pkl's ``default_kwargs`` verbatim, so the online pkl still streams
    with its online options.

    Raises:
        ConfigError: neither tree is there (or the ONNX warp network needs the TensorRT plugin).
    """
    root, pkl = Path(os.fspath(data_root)), Path(os.fspath(cfg_pkl))
    parent = root.absolute().parent
    requested = read_cfg_dict(pkl)
    torch_root = parent / PYTORCH_DIR
    torch_pkl = pkl.parent / CFG_PKL_NAMES["pytorch"]
    if torch_root.is_dir() and torch_pkl.is_file():
        cfg = read_cfg_dict(torch_pkl)
        cfg["default_kwargs"] = requested["default_kwargs"]
        out = dump_cfg_pkl(_derived_pkl_path(pkl, torch_root), cfg)
        return torch_root, out
    onnx_root = parent / ONNX_DIR
    if onnx_root.is_dir():
        cfg = onnx_cfg_dict(requested)
        warp = onnx_root / Path(str(cfg["base_cfg"]["warp_network_cfg"]["model_path"])).name
        ops = _custom_onnx_ops(warp) if warp.is_file() else []
        if ops:
            raise ConfigError(
                f"--fallback: {warp} uses the TensorRT-only op(s) {ops}, which onnxruntime cannot run, and there is "
                f"no {torch_root} with {torch_pkl.name}. Fix: download ditto_pytorch/ (and "
                f"ditto_cfg/{torch_pkl.name}) beside {root}"
            )
        out = dump_cfg_pkl(_derived_pkl_path(pkl, onnx_root), cfg)
        return onnx_root, out
    raise ConfigError(
        f"--fallback: no {PYTORCH_DIR}/ (with {torch_pkl}) or {ONNX_DIR}/ beside {root}. Fix: download the "
        f"PyTorch checkpoints into {torch_root}, or run without --fallback on a machine with TensorRT"
    )


def load_checked_cfg(settings: TrtSettings) -> DittoCfg:
    """Parse the settings' cfg pkl; for a TensorRT cfg run :func:`check_trt_tree`, falling
    back (``settings.fallback``) to :func:`fallback_tree` when the check fails.

    Raises:
        ConfigError: a bad pkl, or TensorRT unusable without ``--fallback`` (or with
            no tree to fall back to).
    """
    cfg_pkl, data_root = settings.cfg_pkl, settings.data_root
    if cfg_pkl is None or data_root is None:
        raise ConfigError("the Ditto backend needs --data_root and --cfg_pkl")
    cfg = load_cfg(cfg_pkl, data_root, check_files=False)
    if not uses_tensorrt(cfg):
        return load_cfg(cfg_pkl, data_root)
    try:
        check_trt_tree(cfg, settings)
        return load_cfg(cfg_pkl, data_root)
    except ConfigError as exc:
        if not settings.fallback:
            raise
        data_root, cfg_pkl = fallback_tree(data_root, cfg_pkl)
        logger.warning("TensorRT cannot serve here (%s). --fallback: serving %s (cfg %s)", exc, data_root, cfg_pkl)
        return load_cfg(cfg_pkl, data_root)


__all__ = [
    "AMPERE",
    "LOCAL_ENGINE_DIR",
    "OFFICIAL_ENGINE_TRT",
    "check_trt_tree",
    "classify_deserialize_failure",
    "diagnose",
    "explain_deserialize_failure",
    "fallback_tree",
    "find_trt_plugin",
    "is_hardware_compatible_tree",
    "load_checked_cfg",
    "plugin_candidates",
    "rebuild_command",
    "rebuild_hint",
    "trt_model_files",
    "trt_plugin_paths",
    "uses_tensorrt",
]
