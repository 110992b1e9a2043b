"""The official Ditto cfg pkl, read into frozen dataclasses.

A cfg pkl (``ditto_cfg/v0.4_hubert_cfg_*.pkl``) is a pickled dict with three
top-level keys (docs/pipeline.md §3.1)::

    base_cfg          {section: {model_path, device, [force_ori_type]}}   one per model
                      (force_ori_type: aux models only; upstream's renderer wrappers reject it)
                      landmark478_cfg = {blaze_face_model_path, face_mesh_model_path,
                                         task_path, device, force_ori_type}
    audio2motion_cfg  {model_path, device, motion_feat_dim, audio_feat_dim, seq_frames,
                       use_emo, use_sc, use_eye_open, use_eye_ball, w2f_type}
    default_kwargs    setup options (overlap_v2, sampling_timesteps, emo arrays, ch_info, …)

:func:`load_cfg` validates that structure, resolves model paths like the
official loader (a path that is not an existing file is joined to
``data_root``), picks each model's engine from its suffix, and keeps
``default_kwargs`` verbatim (arrays and the ``ch_info`` dict are NOT rebuilt).
:meth:`DittoCfg.setup_options` merges the setup options — caller kwargs win,
then the pkl's ``default_kwargs``, then the code defaults of docs/pipeline.md §3.2 — into a
typed :class:`~ditto.backends.talkinghead.options.SetupOptions` (that model and the
merge live in :mod:`ditto.backends.talkinghead.options`).

Deriving a pkl from another is here too, since the runtime's preflight does it for its
fallbacks: :func:`onnx_cfg_dict` re-points a TensorRT cfg at ``ditto_onnx`` and
:func:`dump_cfg_pkl` writes a cfg dict. Pkls with generated contents, for test
checkpoints, are written by :mod:`ditto.tools.cfg_writers`.

This module builds no models and chooses no device.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from ditto.backends.talkinghead.options import SetupOptions, merge_setup_options
from ditto.errors import ConfigError

EngineKind = Literal["torch", "onnx", "tensorrt", "ori"]

#: Model-file suffix → engine (official ``core/utils/load_model.py``).
ENGINE_BY_SUFFIX: Mapping[str, EngineKind] = MappingProxyType(
    {
        ".onnx": "onnx",
        ".engine": "tensorrt",
        ".trt": "tensorrt",
        ".pt": "torch",
        ".pth": "torch",
    }
)

#: base_cfg sections read by the official parser (hubert_cfg: w2f_type "hubert").
BASE_SECTIONS: tuple[str, ...] = (
    "insightface_det_cfg",
    "landmark106_cfg",
    "landmark203_cfg",
    "landmark478_cfg",
    "appearance_extractor_cfg",
    "motion_extractor_cfg",
    "stitch_network_cfg",
    "warp_network_cfg",
    "decoder_cfg",
    "hubert_cfg",
)
#: Sections whose "original" implementation (force_ori_type) exists upstream.
AUX_SECTIONS: frozenset[str] = frozenset(
    {"insightface_det_cfg", "landmark106_cfg", "landmark203_cfg", "landmark478_cfg", "hubert_cfg"}
)
LANDMARK478_PATH_KEYS: tuple[str, ...] = ("task_path", "blaze_face_model_path", "face_mesh_model_path")
AUDIO2MOTION_KEYS: tuple[str, ...] = (
    "model_path",
    "device",
    "motion_feat_dim",
    "audio_feat_dim",
    "seq_frames",
    "use_emo",
    "use_sc",
    "use_eye_open",
    "use_eye_ball",
    "w2f_type",
)
TOP_LEVEL_KEYS: tuple[str, ...] = ("base_cfg", "audio2motion_cfg", "default_kwargs")

CfgFlavor = Literal["pytorch", "trt", "trt_online"]

#: File name of each flavour, as shipped in ``ditto_cfg/``.
CFG_PKL_NAMES: Mapping[CfgFlavor, str] = MappingProxyType(
    {
        "pytorch": "v0.4_hubert_cfg_pytorch.pkl",
        "trt": "v0.4_hubert_cfg_trt.pkl",
        "trt_online": "v0.4_hubert_cfg_trt_online.pkl",
    }
)


def engine_kind_for(path: str | os.PathLike[str], *, force_ori_type: bool = False) -> EngineKind:
    """Engine for a model file: ``ori`` if forced, else by suffix.

    Raises:
        ConfigError: the suffix is none of .onnx/.engine/.trt/.pt/.pth.
    """
    if force_ori_type:
        return "ori"
    suffix = Path(os.fspath(path)).suffix.lower()
    try:
        return ENGINE_BY_SUFFIX[suffix]
    except KeyError:
        raise ConfigError(
            f"unsupported model file type {os.fspath(path)!r}: expected one of "
            f"{', '.join(ENGINE_BY_SUFFIX)} (or force_ori_type for aux models)"
        ) from None


# -- dataclasses ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCfg:
    """One base_cfg section (or the LMDM), with its path resolved."""

    section: str  # base_cfg key, e.g. "decoder_cfg"; "audio2motion_cfg" for the LMDM
    model_path: Path  # resolved against data_root
    device: str  # "cuda" | "cpu" as written in the pkl
    force_ori_type: bool
    engine: EngineKind
    extra: Mapping[str, Any] = field(default_factory=dict)  # any other keys, verbatim


@dataclass(frozen=True, slots=True)
class Landmark478Cfg:
    """MediaPipe 478-point mesh: blaze_face + face_mesh engines, or the .task file (ori)."""

    section: str
    task_path: Path | None  # MediaPipe face_landmarker.task (force_ori_type)
    blaze_face_model_path: Path | None
    face_mesh_model_path: Path | None
    device: str
    force_ori_type: bool
    engine: EngineKind
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Audio2MotionCfg:
    """``audio2motion_cfg``: the LMDM file and the condition layout."""

    model: ModelCfg  # the LMDM checkpoint/engine
    motion_feat_dim: int  # 265
    audio_feat_dim: int  # condition width per frame, 1103 for v0.4 hubert
    seq_frames: int  # 80 frames per LMDM window
    use_emo: bool
    use_sc: bool
    use_eye_open: bool
    use_eye_ball: bool
    w2f_type: str  # "hubert"


@dataclass(frozen=True, slots=True, eq=False)
class DittoCfg:
    """A parsed cfg pkl. ``default_kwargs`` is the pkl's dict, read-only view, values verbatim."""

    path: Path
    data_root: Path
    insightface_det: ModelCfg
    landmark106: ModelCfg
    landmark203: ModelCfg
    landmark478: Landmark478Cfg
    appearance_extractor: ModelCfg
    motion_extractor: ModelCfg
    stitch_network: ModelCfg
    warp_network: ModelCfg
    decoder: ModelCfg
    wav2feat: ModelCfg  # hubert_cfg (w2f_type "hubert")
    audio2motion: Audio2MotionCfg
    default_kwargs: Mapping[str, Any]

    @property
    def lmdm(self) -> ModelCfg:
        return self.audio2motion.model

    def model_cfgs(self) -> dict[str, ModelCfg]:
        """Every single-file model section by name (landmark478 excluded)."""
        return {
            "insightface_det": self.insightface_det,
            "landmark106": self.landmark106,
            "landmark203": self.landmark203,
            "appearance_extractor": self.appearance_extractor,
            "motion_extractor": self.motion_extractor,
            "stitch_network": self.stitch_network,
            "warp_network": self.warp_network,
            "decoder": self.decoder,
            "hubert": self.wav2feat,
            "lmdm": self.audio2motion.model,
        }

    def setup_options(self, **caller_kwargs: Any) -> SetupOptions:
        """Merge setup options: ``caller_kwargs`` > pkl ``default_kwargs`` > code defaults."""
        return merge_setup_options(caller_kwargs, self.default_kwargs, pkl_name=str(self.path))


# -- reading ----------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def _resolve(p: str, data_root: Path) -> Path:
    """Official rule: an existing file is used as is, anything else is joined to data_root."""
    return Path(p) if os.path.isfile(p) else data_root / p


def _require_file(path: Path, what: str, pkl: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{pkl}: model file for {what} not found: {path}")


def _as_dict(obj: Any, what: str, pkl: Path) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{pkl}: {what} must be a dict, got {type(obj).__name__}; not a Ditto cfg pkl")
    return dict(obj)


def _get_path_str(section: dict[str, Any], key: str, where: str, pkl: Path) -> str:
    if key not in section:
        raise ConfigError(f"{pkl}: {where} lacks {key!r}; expected a Ditto cfg pkl")
    value = section[key]
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{pkl}: {where}[{key!r}] must be a path string, got {type(value).__name__}")
    return os.fspath(value)


def _device(section: dict[str, Any], where: str, pkl: Path) -> str:
    device = section.get("device", "cuda")
    if not isinstance(device, str):
        raise ConfigError(f"{pkl}: {where}['device'] must be a string, got {type(device).__name__}")
    return device


def _parse_model(name: str, raw: Any, data_root: Path, pkl: Path, check_files: bool) -> ModelCfg:
    where = f"base_cfg[{name!r}]" if name != "audio2motion_cfg" else "audio2motion_cfg"
    section = _as_dict(raw, where, pkl)
    path = _resolve(_get_path_str(section, "model_path", where, pkl), data_root)
    force = section.get("force_ori_type", False)
    if not _is_bool(force):
        raise ConfigError(f"{pkl}: {where}['force_ori_type'] must be a bool, got {type(force).__name__}")
    force = bool(force)
    if force and name not in AUX_SECTIONS:
        raise ConfigError(f"{pkl}: {where} sets force_ori_type, which only aux models support")
    try:
        engine = engine_kind_for(path, force_ori_type=force)
    except ConfigError as exc:
        raise ConfigError(f"{pkl}: {where}: {exc}") from None
    if check_files:
        _require_file(path, where, pkl)
    extra = {k: v for k, v in section.items() if k not in ("model_path", "device", "force_ori_type")}
    return ModelCfg(
        section=name,
        model_path=path,
        device=_device(section, where, pkl),
        force_ori_type=force,
        engine=engine,
        extra=MappingProxyType(extra),
    )


def _parse_landmark478(raw: Any, data_root: Path, pkl: Path, check_files: bool) -> Landmark478Cfg:
    name = "landmark478_cfg"
    where = f"base_cfg[{name!r}]"
    section = _as_dict(raw, where, pkl)
    paths: dict[str, Path | None] = {}
    for key in LANDMARK478_PATH_KEYS:
        value = section.get(key, "")
        if value is None or value == "":
            paths[key] = None
            continue
        paths[key] = _resolve(_get_path_str(section, key, where, pkl), data_root)
    force = bool(section.get("force_ori_type", False))
    if force:
        if paths["task_path"] is None:
            raise ConfigError(f"{pkl}: {where} sets force_ori_type but has no task_path")
        engine: EngineKind = "ori"
        needed = ["task_path"]
    else:
        if paths["blaze_face_model_path"] is None or paths["face_mesh_model_path"] is None:
            raise ConfigError(f"{pkl}: {where} needs blaze_face_model_path and face_mesh_model_path")
        try:
            engine = engine_kind_for(paths["blaze_face_model_path"])  # type: ignore[arg-type]
            mesh_engine = engine_kind_for(paths["face_mesh_model_path"])  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"{pkl}: {where}: {exc}") from None
        if mesh_engine != engine:
            raise ConfigError(
                f"{pkl}: {where}: blaze_face and face_mesh use different engines ({engine}, {mesh_engine})"
            )
        needed = ["blaze_face_model_path", "face_mesh_model_path"]
    if check_files:
        for key in needed:
            _require_file(paths[key], f"{where}[{key!r}]", pkl)  # type: ignore[arg-type]
    extra = {k: v for k, v in section.items() if k not in (*LANDMARK478_PATH_KEYS, "device", "force_ori_type")}
    return Landmark478Cfg(
        section=name,
        device=_device(section, where, pkl),
        force_ori_type=force,
        engine=engine,
        extra=MappingProxyType(extra),
        **paths,
    )


def _parse_audio2motion(raw: Any, data_root: Path, pkl: Path, check_files: bool) -> Audio2MotionCfg:
    section = _as_dict(raw, "audio2motion_cfg", pkl)
    missing = [k for k in AUDIO2MOTION_KEYS if k not in section]
    if missing:
        raise ConfigError(f"{pkl}: audio2motion_cfg lacks {missing}; expected a Ditto cfg pkl")
    ints = {}
    for key in ("motion_feat_dim", "audio_feat_dim", "seq_frames"):
        if not _is_int(section[key]) or int(section[key]) <= 0:
            raise ConfigError(f"{pkl}: audio2motion_cfg[{key!r}] must be a positive int, got {section[key]!r}")
        ints[key] = int(section[key])
    bools = {}
    for key in ("use_emo", "use_sc", "use_eye_open", "use_eye_ball"):
        if not _is_bool(section[key]):
            raise ConfigError(f"{pkl}: audio2motion_cfg[{key!r}] must be a bool, got {section[key]!r}")
        bools[key] = bool(section[key])
    model = _parse_model(
        "audio2motion_cfg", {k: section[k] for k in ("model_path", "device")}, data_root, pkl, check_files
    )
    return Audio2MotionCfg(
        model=model,
        motion_feat_dim=ints["motion_feat_dim"],
        audio_feat_dim=ints["audio_feat_dim"],
        seq_frames=ints["seq_frames"],
        use_emo=bools["use_emo"],
        use_sc=bools["use_sc"],
        use_eye_open=bools["use_eye_open"],
        use_eye_ball=bools["use_eye_ball"],
        w2f_type=section["w2f_type"],
    )


def read_cfg_dict(cfg_pkl: str | os.PathLike[str]) -> dict[str, Any]:
    """Unpickle a cfg pkl and check its top level; values untouched.

    Raises:
        ConfigError: missing/unreadable file, not a pickle, truncated, or not a
            dict with base_cfg / audio2motion_cfg / default_kwargs.
    """
    pkl = Path(os.fspath(cfg_pkl))
    try:
        with open(pkl, "rb") as fh:
            obj = pickle.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"cfg pkl not found: {pkl}") from None
    except IsADirectoryError:
        raise ConfigError(f"cfg pkl is a directory, expected a file: {pkl}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise ConfigError(
            f"cannot read {pkl} as a Ditto cfg pkl (expected a pickled dict with "
            f"{', '.join(TOP_LEVEL_KEYS)}): {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise ConfigError(
            f"{pkl} holds a {type(obj).__name__}; expected a Ditto cfg dict with {', '.join(TOP_LEVEL_KEYS)}"
        )
    missing = [k for k in TOP_LEVEL_KEYS if k not in obj]
    if missing:
        raise ConfigError(f"{pkl} is not a Ditto cfg pkl: missing top-level key(s) {missing}")
    return obj


def load_cfg(
    cfg_pkl: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    replace_cfg: Mapping[str, Mapping[str, Any]] | None = None,
    check_files: bool = True,
) -> DittoCfg:
    """Read an official cfg pkl.

    Args:
        cfg_pkl: the pkl (e.g. ``ditto_cfg/v0.4_hubert_cfg_trt_online.pkl``).
        data_root: folder the pkl's relative model paths are joined to
            (e.g. ``ditto_trt_Ampere_Plus`` or ``ditto_pytorch``).
        replace_cfg: ``{section: {key: value}}`` patches applied to the
            top-level sections before parsing (the official debug hook;
            e.g. ``{"audio2motion_cfg": {"device": "cpu"}}``).
        check_files: require every model file named to exist.

    Raises:
        ConfigError: not a Ditto cfg (names the file and what was expected),
            an unsupported model suffix, or (``check_files``) a missing model file.
    """
    pkl = Path(os.fspath(cfg_pkl))
    root = Path(os.fspath(data_root))
    raw = read_cfg_dict(pkl)
    base = _as_dict(raw["base_cfg"], "base_cfg", pkl)
    a2m = _as_dict(raw["audio2motion_cfg"], "audio2motion_cfg", pkl)
    defaults = _as_dict(raw["default_kwargs"], "default_kwargs", pkl)
    sections = {"base_cfg": base, "audio2motion_cfg": a2m, "default_kwargs": defaults}
    for sec, patch in (replace_cfg or {}).items():
        if not isinstance(patch, Mapping):
            continue
        if sec not in sections:
            raise ConfigError(f"replace_cfg names unknown section {sec!r}; known: {', '.join(sections)}")
        for key, value in patch.items():
            sections[sec][key] = value

    w2f_type = a2m.get("w2f_type", "hubert")
    if w2f_type != "hubert":
        raise ConfigError(f"{pkl}: audio2motion_cfg['w2f_type'] is {w2f_type!r}; only 'hubert' is supported")
    needed = list(BASE_SECTIONS)
    missing = [s for s in needed if s not in base]
    if missing:
        raise ConfigError(f"{pkl}: base_cfg lacks {missing}; expected a Ditto cfg pkl")

    models = {s: _parse_model(s, base[s], root, pkl, check_files) for s in needed if s != "landmark478_cfg"}
    return DittoCfg(
        path=pkl,
        data_root=root,
        insightface_det=models["insightface_det_cfg"],
        landmark106=models["landmark106_cfg"],
        landmark203=models["landmark203_cfg"],
        landmark478=_parse_landmark478(base["landmark478_cfg"], root, pkl, check_files),
        appearance_extractor=models["appearance_extractor_cfg"],
        motion_extractor=models["motion_extractor_cfg"],
        stitch_network=models["stitch_network_cfg"],
        warp_network=models["warp_network_cfg"],
        decoder=models["decoder_cfg"],
        wav2feat=models["hubert_cfg"],
        audio2motion=_parse_audio2motion(a2m, root, pkl, check_files),
        default_kwargs=MappingProxyType(defaults),
    )


# -- deriving pkls (preflight fallbacks, tools) ------------------------------------------------------


def dump_cfg_pkl(path: str | os.PathLike[str], cfg: Mapping[str, Any]) -> Path:
    """Pickle a cfg dict at ``path`` (parent folders created, replaced atomically)."""
    out = Path(os.fspath(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(dict(cfg), fh, protocol=4)
    os.replace(tmp, out)
    return out


#: Precision tags of engine file names (``decoder_fp16.engine``, ``hubert_fp32.engine``).
ENGINE_PRECISION_TAGS: tuple[str, ...] = ("_fp16", "_fp32")


def onnx_model_name(engine_name: str) -> str:
    """``ditto_trt_*`` file name → the ``ditto_onnx`` name of the same model.

    ``decoder_fp16.engine`` → ``decoder.onnx``, ``lmdm_v0.4_hubert_fp32.engine`` →
    ``lmdm_v0.4_hubert.onnx``; a folder part is kept. Names that are not engines are returned unchanged.
    """
    path = Path(engine_name)
    if ENGINE_BY_SUFFIX.get(path.suffix.lower()) != "tensorrt":
        return engine_name
    stem = path.stem
    for tag in ENGINE_PRECISION_TAGS:
        if stem.endswith(tag):
            stem = stem[: -len(tag)]
    return str(path.with_name(stem + ".onnx"))


def onnx_cfg_dict(trt_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A TensorRT cfg dict re-pointed at the ``ditto_onnx`` files.

    Upstream ships no cfg pkl for ``ditto_onnx``, and its loader joins the pkl's file
    names to ``data_root`` as they are, so a trt pkl used with ``--data_root ditto_onnx``
    looks for ``*_fp16.engine`` there and fails. This rewrites every engine name
    (``model_path``, and ``blaze_face_model_path`` / ``face_mesh_model_path`` of
    ``landmark478_cfg``) with :func:`onnx_model_name`; ``default_kwargs`` (arrays,
    ``ch_info``) is carried over as the same objects. ``python -m ditto.tools.onnx_cfg``
    applies it to a pkl file.
    """
    out = dict(trt_cfg)
    base = {}
    for section, values in dict(trt_cfg["base_cfg"]).items():
        values = dict(values)
        for key in ("model_path", "blaze_face_model_path", "face_mesh_model_path"):
            if isinstance(values.get(key), str):
                values[key] = onnx_model_name(values[key])
        base[section] = values
    out["base_cfg"] = base
    a2m = dict(trt_cfg["audio2motion_cfg"])
    a2m["model_path"] = onnx_model_name(a2m["model_path"])
    out["audio2motion_cfg"] = a2m
    return out
