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
6. the smallest engine deserializes on this GPU and has the expected tensors
   (TensorRT version / hardware mismatches are explained by the runner).

With ``--fallback``, :func:`fallback_tree` picks the ``ditto_pytorch`` (else
``ditto_onnx``) tree beside the engine folder and writes a cfg pkl for it that
keeps the requested pkl's setup options (so the online pkl stays online).
:func:`load_checked_cfg` strings the two together for the backend.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

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
    PLUGIN_FILE_NAME,
    TensorRTEngine,
    check_tensorrt_version,
    import_tensorrt,
    load_plugin_library,
    rebuild_hint,
)
from ditto.backends.talkinghead.runtime.trt_bindings import model_for_file
from ditto.errors import ConfigError

logger = logging.getLogger(__name__)

#: Minimum compute capability of hardware-compatible ("Ampere_Plus") engines.
AMPERE = (8, 0)
PYTORCH_DIR = "ditto_pytorch"
ONNX_DIR = "ditto_onnx"


class TrtSettings(Protocol):
    """The settings this module reads (``ditto.settings.Settings`` has them)."""

    data_root: Path | None
    cfg_pkl: Path | None
    device: str
    trt_plugin: Path | None
    fallback: bool


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
    out = [warp_dir / PLUGIN_FILE_NAME, cfg.data_root / PLUGIN_FILE_NAME,
           cfg.data_root.parent / ONNX_DIR / PLUGIN_FILE_NAME]
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
            f"{rebuild_hint(engine_dir)} (build_engines --models NAME builds only the missing ones)")

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
            "or add --fallback to serve the PyTorch/ONNX checkpoints on the CPU")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{where}, but torch sees no CUDA GPU (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}): TensorRT needs one. Fix: install a CUDA build of torch and check "
            "the NVIDIA driver (nvidia-smi), or add --fallback to serve the PyTorch/ONNX checkpoints")
    gpu = torch.device("cuda" if device == "auto" else device)
    if gpu.index is None:
        gpu = torch.device("cuda", torch.cuda.current_device())
    cc = torch.cuda.get_device_capability(gpu)
    gpu_name = f"{torch.cuda.get_device_name(gpu)} (sm_{cc[0]}{cc[1]})"
    if is_hardware_compatible_tree(engine_dir) and tuple(cc) < AMPERE:
        raise ConfigError(
            f"{where}, built for Ampere or newer GPUs (hardware-compatibility level Ampere_Plus, compute "
            f"capability >= {AMPERE[0]}.{AMPERE[1]}), but this GPU is {gpu_name}. Fix: {rebuild_hint(engine_dir)}")

    plugins: tuple[Path, ...] = ()
    if "warp_network" in files:
        plugin = find_trt_plugin(cfg, settings)
        if plugin is None:
            looked = ", ".join(str(p) for p in plugin_candidates(cfg, settings))
            raise ConfigError(
                f"{where}; the warp network engine needs the GridSample3D plugin {PLUGIN_FILE_NAME}, not found "
                f"(looked at {looked}). Fix: copy it from ditto_onnx/ next to the engines, or pass --trt_plugin PATH")
        try:
            load_plugin_library(plugin)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        plugins = (plugin,)

    probe = min(files.values(), key=lambda p: p.stat().st_size)
    logger.info("TensorRT %s on %s: probing %s", version_str, gpu_name, probe.name)
    engine = TensorRTEngine(probe, device=gpu, plugin_paths=plugins, model=model_for_file(probe),
                            lmdm_dims=_lmdm_dims(cfg))
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
                f"ditto_cfg/{torch_pkl.name}) beside {root}")
        out = dump_cfg_pkl(_derived_pkl_path(pkl, onnx_root), cfg)
        return onnx_root, out
    raise ConfigError(
        f"--fallback: no {PYTORCH_DIR}/ (with {torch_pkl}) or {ONNX_DIR}/ beside {root}. Fix: download the "
        f"PyTorch checkpoints into {torch_root}, or run without --fallback on a machine with TensorRT")


def load_checked_cfg(settings: TrtSettings) -> DittoCfg:
    """Parse the settings' cfg pkl; for a TensorRT cfg run :func:`check_trt_tree`, falling
    back (``settings.fallback``) to :func:`fallback_tree` when the check fails.

    Raises:
        ConfigError: a bad pkl, or TensorRT unusable without ``--fallback`` (or with
            no tree to fall back to).
    """
    cfg = load_cfg(settings.cfg_pkl, settings.data_root, check_files=False)
    if not uses_tensorrt(cfg):
        return load_cfg(settings.cfg_pkl, settings.data_root)
    try:
        check_trt_tree(cfg, settings)
        return load_cfg(settings.cfg_pkl, settings.data_root)
    except ConfigError as exc:
        if not settings.fallback:
            raise
        data_root, cfg_pkl = fallback_tree(settings.data_root, settings.cfg_pkl)
        logger.warning("TensorRT cannot serve here (%s). --fallback: serving %s (cfg %s)", exc, data_root, cfg_pkl)
        return load_cfg(cfg_pkl, data_root)


__all__ = [
    "AMPERE", "check_trt_tree", "fallback_tree", "find_trt_plugin", "is_hardware_compatible_tree",
    "load_checked_cfg", "plugin_candidates", "trt_model_files", "trt_plugin_paths", "uses_tensorrt",
]
