"""The cfg pkl writers: official structure, and pkls upstream's parser and constructors accept."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ditto.backends.talkinghead.config import CFG_PKL_NAMES, dump_cfg_pkl, onnx_cfg_dict
from ditto.tools.cfg_writers import build_cfg_dict, write_cfg_pkl


def test_writer_produces_the_official_structure(tmp_path: Path) -> None:
    pkls = {flavor: write_cfg_pkl(tmp_path / "ditto_cfg", flavor, seed=0) for flavor in CFG_PKL_NAMES}
    assert {p.name for p in pkls.values()} == {
        "v0.4_hubert_cfg_pytorch.pkl",
        "v0.4_hubert_cfg_trt.pkl",
        "v0.4_hubert_cfg_trt_online.pkl",
    }
    raw = pickle.loads(pkls["trt_online"].read_bytes())
    assert set(raw) == {"base_cfg", "audio2motion_cfg", "default_kwargs"}
    assert raw["base_cfg"]["decoder_cfg"] == {"model_path": "decoder_fp16.engine", "device": "cuda"}
    assert raw["base_cfg"]["motion_extractor_cfg"]["model_path"] == "motion_extractor_fp32.engine"
    assert raw["audio2motion_cfg"]["model_path"] == "lmdm_v0.4_hubert_fp32.engine"
    assert raw["audio2motion_cfg"]["audio_feat_dim"] == 1103
    dk = raw["default_kwargs"]
    assert dk["emo"].shape == (600, 8) and dk["delta_eye_arr"].shape == (15, 63)
    assert dk["v_min_max_for_clip"].shape == (4, 265)
    assert set(dk["ch_info"]) >= {"x_s_info_lst", "sc", "eye_open_lst", "eye_ball_lst"}
    pt = pickle.loads(pkls["pytorch"].read_bytes())
    assert pt["base_cfg"]["decoder_cfg"]["model_path"] == "models/decoder.pth"
    assert pt["base_cfg"]["hubert_cfg"] == {
        "model_path": "aux_models/hubert_streaming_fix_kv.onnx",
        "device": "cuda",
        "force_ori_type": True,
    }
    assert pt["base_cfg"]["landmark478_cfg"]["task_path"] == "aux_models/face_landmarker.task"


# What upstream's parse_cfg and constructors accept, per section (docs/pipeline.md §3.1; upstream
# core/atomic_components/cfg.py and the wrapper classes): (keys that must be there, keys allowed).
# The renderer wrappers are ``Wrapper(model_path, device)``; the aux wrappers take ``**kwargs`` that
# reach the "ori" module only through force_ori_type; Landmark478 has no model_path (parse_cfg
# resolves only its three path keys, and a model_path would reach load_model twice).
_RENDERER_KEYS = ({"model_path"}, {"model_path", "device"})
_AUX_KEYS = ({"model_path"}, {"model_path", "device", "force_ori_type"})
OFFICIAL_SECTION_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "insightface_det_cfg": _AUX_KEYS,
    "landmark106_cfg": _AUX_KEYS,
    "landmark203_cfg": _AUX_KEYS,
    "hubert_cfg": _AUX_KEYS,
    "landmark478_cfg": (
        set(),
        {"blaze_face_model_path", "face_mesh_model_path", "task_path", "device", "force_ori_type"},
    ),
    "appearance_extractor_cfg": _RENDERER_KEYS,
    "motion_extractor_cfg": _RENDERER_KEYS,
    "stitch_network_cfg": _RENDERER_KEYS,
    "warp_network_cfg": _RENDERER_KEYS,
    "decoder_cfg": _RENDERER_KEYS,
}
#: parse_cfg indexes every one of these (a missing one is a KeyError upstream); others are ignored.
OFFICIAL_AUDIO2MOTION_KEYS = {
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
}


@pytest.mark.parametrize("flavor", [*CFG_PKL_NAMES, "onnx", "onnx_online"])
def test_written_pkls_fit_the_official_parser_and_constructors(tmp_path, flavor) -> None:
    if flavor.startswith("onnx"):
        trt = build_cfg_dict("trt_online" if flavor == "onnx_online" else "trt")
        raw = pickle.loads(dump_cfg_pkl(tmp_path / "cfg.pkl", onnx_cfg_dict(trt)).read_bytes())
    else:
        raw = pickle.loads(write_cfg_pkl(tmp_path, flavor).read_bytes())
    assert set(raw) == {"base_cfg", "audio2motion_cfg", "default_kwargs"}
    assert set(raw["base_cfg"]) == set(OFFICIAL_SECTION_KEYS)
    for section, values in raw["base_cfg"].items():
        required, allowed = OFFICIAL_SECTION_KEYS[section]
        assert required <= set(values) <= allowed, (section, sorted(values))
    lmk478 = raw["base_cfg"]["landmark478_cfg"]
    needed = ["task_path"] if lmk478.get("force_ori_type") else ["blaze_face_model_path", "face_mesh_model_path"]
    assert all(lmk478.get(key) for key in needed)
    assert OFFICIAL_AUDIO2MOTION_KEYS <= set(raw["audio2motion_cfg"])
    assert isinstance(raw["default_kwargs"], dict)
