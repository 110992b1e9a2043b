"""Cfg pkls in the official structure with generated contents, for test checkpoints and benchmarks.

:func:`build_cfg_dict` lays out one shipped flavour (``trt``, ``trt_online``,
``pytorch``) the way upstream's ``ditto_cfg/*.pkl`` are laid out (docs/pipeline.md
§3.1), with plausible stand-ins for the arrays and the reference identity that the
real pkls store; :func:`write_cfg_pkl` pickles it under the official file name.
``ditto/tools/make_test_checkpoints.py`` writes the cfg folder of a test tree with
them. Reading is :mod:`ditto.backends.talkinghead.config`'s job.

Not imported by the runtime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ditto.backends.talkinghead.config import AUX_SECTIONS, CFG_PKL_NAMES, CfgFlavor, dump_cfg_pkl

#: Our file names for cfg pkls that use ``ditto_onnx`` (upstream ships none; see
#: :func:`~ditto.backends.talkinghead.config.onnx_cfg_dict`).
ONNX_CFG_PKL_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "onnx": "v0.4_hubert_cfg_onnx.pkl",
        "onnx_online": "v0.4_hubert_cfg_onnx_online.pkl",
    }
)

# (section, trt engine name, pytorch-layout path, force_ori_type in the pytorch layout (aux sections only))
_MODEL_FILES: tuple[tuple[str, str, str, bool], ...] = (
    ("insightface_det_cfg", "insightface_det_fp16.engine", "aux_models/det_10g.onnx", True),
    ("landmark106_cfg", "landmark106_fp16.engine", "aux_models/2d106det.onnx", True),
    ("landmark203_cfg", "landmark203_fp16.engine", "aux_models/landmark203.onnx", True),
    ("appearance_extractor_cfg", "appearance_extractor_fp16.engine", "models/appearance_extractor.pth", False),
    ("motion_extractor_cfg", "motion_extractor_fp32.engine", "models/motion_extractor.pth", False),
    ("stitch_network_cfg", "stitch_network_fp16.engine", "models/stitch_network.pth", False),
    ("warp_network_cfg", "warp_network_fp16.engine", "models/warp_network.pth", False),
    ("decoder_cfg", "decoder_fp16.engine", "models/decoder.pth", False),
    ("hubert_cfg", "hubert_fp32.engine", "aux_models/hubert_streaming_fix_kv.onnx", True),
)
LMDM_FILES: Mapping[str, str] = MappingProxyType(
    {
        "trt": "lmdm_v0.4_hubert_fp32.engine",
        "pytorch": "models/lmdm_v0.4_hubert.pth",
    }
)


def _synthetic_arrays(seed: int) -> dict[str, Any]:
    """Plausible stand-ins for the pkl's stored arrays and reference identity (same shapes/keys)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (600, 8)).astype(np.float32)
    logits[:, 4] += 6.0  # mostly "neutral"
    emo = np.exp(logits - logits.max(1, keepdims=True))
    emo = (emo / emo.sum(1, keepdims=True)).astype(np.float32)
    delta_eye = np.zeros((15, 63), dtype=np.float32)
    profile = np.sin(np.linspace(0.0, np.pi, 15, dtype=np.float32))  # close then reopen
    eye_dims = [3 * k + j for k in (11, 13, 15, 16, 18) for j in (1,)]  # y of eye keypoints
    delta_eye[:, eye_dims] = 0.01 * profile[:, None]
    v_lo = rng.uniform(-3.0, -1.0, 265).astype(np.float32)
    v_hi = rng.uniform(1.0, 3.0, 265).astype(np.float32)
    v_mean = ((v_lo + v_hi) / 2).astype(np.float32)
    v_std = ((v_hi - v_lo) / 4).astype(np.float32)
    v_min_max = np.stack([v_lo, v_hi, v_mean, v_std], 0)

    def bins() -> np.ndarray:
        x = np.zeros((1, 66), dtype=np.float32)
        x[0, 32:34] = 4.0
        return x + rng.normal(0, 0.1, (1, 66)).astype(np.float32)

    kp = rng.normal(0.0, 0.2, (1, 63)).astype(np.float32)
    x_s_info = {
        "pitch": bins(),
        "yaw": bins(),
        "roll": bins(),
        "t": rng.normal(0.0, 0.01, (1, 3)).astype(np.float32),
        "exp": rng.normal(0.0, 0.01, (1, 63)).astype(np.float32),
        "scale": np.full((1, 1), 1.5, dtype=np.float32),
        "kp": kp,
    }
    ch_info = {
        "x_s_info_lst": [x_s_info],
        "sc": kp.reshape(63).copy(),
        "eye_open_lst": [np.full((1, 2), 0.3, dtype=np.float32)],
        "eye_ball_lst": [np.zeros((1, 6), dtype=np.float32)],
    }
    return {"emo": emo, "delta_eye_arr": delta_eye, "v_min_max_for_clip": v_min_max, "ch_info": ch_info}


def build_cfg_dict(
    flavor: CfgFlavor, *, device: str = "cuda", seed: int = 0, default_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A cfg dict in the official structure for one shipped flavour.

    * ``trt`` / ``trt_online``: bare engine names of ``ditto_trt_Ampere_Plus``
      (``*_fp16.engine`` / ``*_fp32.engine``), resolved against that data_root.
    * ``pytorch``: ``models/*.pth`` for the renderer and LMDM, ``aux_models/*``
      with ``force_ori_type`` for the aux models, resolved against ``ditto_pytorch``.
    * Only the aux sections (:data:`AUX_SECTIONS`) carry ``force_ori_type``; the renderer
      sections hold ``model_path`` and ``device`` alone, the two arguments upstream's
      renderer wrappers accept, so the pkls load in the official pipeline unchanged.
    * ``trt_online`` carries the streaming options of docs/pipeline.md §3.2 (overlap_v2 70,
      10 DDIM steps, …); every flavour carries generated emo (600, 8),
      delta_eye_arr (15, 63), v_min_max_for_clip (4, 265) and ch_info.

    ``default_kwargs`` entries replace the generated ones.
    """
    if flavor not in CFG_PKL_NAMES:
        raise ValueError(f"unknown cfg flavour {flavor!r}; expected one of {', '.join(CFG_PKL_NAMES)}")
    pytorch = flavor == "pytorch"
    base: dict[str, Any] = {}
    for section, engine_name, torch_name, ori in _MODEL_FILES:
        base[section] = {"model_path": torch_name if pytorch else engine_name, "device": device}
        # upstream's renderer wrappers take (model_path, device) only: the key would be a TypeError there
        if section in AUX_SECTIONS:
            base[section]["force_ori_type"] = ori and pytorch
    if pytorch:
        base["landmark478_cfg"] = {
            "blaze_face_model_path": "",
            "face_mesh_model_path": "",
            "task_path": "aux_models/face_landmarker.task",
            "device": device,
            "force_ori_type": True,
        }
    else:
        base["landmark478_cfg"] = {
            "blaze_face_model_path": "blaze_face_fp16.engine",
            "face_mesh_model_path": "face_mesh_fp16.engine",
            "task_path": "",
            "device": device,
            "force_ori_type": False,
        }
    audio2motion = {
        "model_path": LMDM_FILES["pytorch" if pytorch else "trt"],
        "device": device,
        "motion_feat_dim": 265,
        "audio_feat_dim": 1024 + 8 + 2 + 6 + 63,
        "seq_frames": 80,
        "use_emo": True,
        "use_sc": True,
        "use_eye_open": True,
        "use_eye_ball": True,
        "w2f_type": "hubert",
    }
    kwargs: dict[str, Any] = _synthetic_arrays(seed)
    if flavor == "trt_online":
        kwargs.update(
            {
                "online_mode": True,
                "overlap_v2": 70,
                "sampling_timesteps": 10,
                "fix_kp_cond": 1,
                "fix_kp_cond_dim": [0, 202],
                "smo_k_d": 3,
                "fade_type": "d0",
                "fade_out_keys": ["exp"],
                "overall_ctrl_info": {"delta_pitch": 2},
                "max_size": 1920,
                "template_n_frames": -1,
                "crop_scale": 2.3,
                "crop_vx_ratio": 0,
                "crop_vy_ratio": -0.125,
                "crop_flag_do_rot": True,
                "smo_k_s": 13,
                "eye_f0_mode": False,
                "N_d": -1,
                "use_d_keys": None,
                "relative_d": True,
                "drive_eye": None,
                "delta_eye_open_n": 0,
                "flag_stitching": True,
            }
        )
    else:
        kwargs.update(
            {
                "online_mode": False,
                "overlap_v2": 10,
                "sampling_timesteps": 50,
                "fix_kp_cond": 0,
                "smo_k_d": 3,
                "fade_type": "",
                "overall_ctrl_info": {},
            }
        )
    kwargs.update(default_kwargs or {})
    return {"base_cfg": base, "audio2motion_cfg": audio2motion, "default_kwargs": kwargs}


def write_cfg_pkl(
    path: str | os.PathLike[str],
    flavor: CfgFlavor,
    *,
    device: str = "cuda",
    seed: int = 0,
    default_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write :func:`build_cfg_dict` ``(flavor, …)`` as a pickle at ``path``.

    ``path`` may be a folder (an existing directory, or any path not ending
    in ``.pkl``; it is created), in which case the official file name of the
    flavour (:data:`CFG_PKL_NAMES`) is used. Returns the file written.
    """
    out = Path(os.fspath(path))
    if out.is_dir() or out.suffix != ".pkl":
        out = out / CFG_PKL_NAMES[flavor]
    return dump_cfg_pkl(out, build_cfg_dict(flavor, device=device, seed=seed, default_kwargs=default_kwargs))
