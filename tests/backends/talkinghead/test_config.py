"""cfg pkl parsing: structure, path resolution, engines, option precedence, every error case.

The setup-option model on its own is tested in test_options.py, the pkl writers in
tests/tools/test_cfg_writers.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ditto.backends.talkinghead.config import (
    CFG_PKL_NAMES,
    DittoCfg,
    dump_cfg_pkl,
    engine_kind_for,
    load_cfg,
    read_cfg_dict,
)
from ditto.backends.talkinghead.options import SETUP_OPTION_NAMES, merge_setup_options
from ditto.errors import ConfigError
from ditto.tools.cfg_writers import build_cfg_dict, write_cfg_pkl


def _touch_models(cfg: dict, root: Path) -> None:
    """Create every file a cfg dict names, under root."""
    names = [cfg["audio2motion_cfg"]["model_path"]]
    for sec in cfg["base_cfg"].values():
        names += [
            sec[k] for k in ("model_path", "task_path", "blaze_face_model_path", "face_mesh_model_path") if sec.get(k)
        ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


@pytest.fixture
def tree(tmp_path: Path):
    """The three pkls and two data roots laid out like the official checkpoints folder."""
    cfg_dir = tmp_path / "ditto_cfg"
    pkls = {flavor: write_cfg_pkl(cfg_dir, flavor, seed=0) for flavor in CFG_PKL_NAMES}
    trt_root, pt_root = tmp_path / "ditto_trt_Ampere_Plus", tmp_path / "ditto_pytorch"
    _touch_models(build_cfg_dict("trt"), trt_root)
    _touch_models(build_cfg_dict("pytorch"), pt_root)
    return pkls, trt_root, pt_root


def test_loader_needs_no_force_ori_type(tree) -> None:
    """Official pkls may leave force_ori_type out anywhere: the engine then follows the suffix."""
    pkls, trt_root, _ = tree
    cfg = read_cfg_dict(pkls["trt"])
    for values in cfg["base_cfg"].values():
        values.pop("force_ori_type", None)
    loaded = load_cfg(dump_cfg_pkl(pkls["trt"].with_name("no_force.pkl"), cfg), trt_root)
    for model in (*loaded.model_cfgs().values(), loaded.landmark478):
        assert model.engine == "tensorrt" and not model.force_ori_type


def test_trt_online_pkl_parses(tree) -> None:
    pkls, trt_root, _ = tree
    cfg = load_cfg(pkls["trt_online"], trt_root)
    assert isinstance(cfg, DittoCfg)
    for name, model in cfg.model_cfgs().items():
        assert model.engine == "tensorrt", name
        assert model.model_path.parent == trt_root and model.model_path.is_file()
    assert cfg.decoder.model_path == trt_root / "decoder_fp16.engine"
    assert cfg.landmark478.engine == "tensorrt" and cfg.landmark478.task_path is None
    assert cfg.landmark478.blaze_face_model_path == trt_root / "blaze_face_fp16.engine"
    a2m = cfg.audio2motion
    assert (a2m.motion_feat_dim, a2m.audio_feat_dim, a2m.seq_frames, a2m.w2f_type) == (265, 1103, 80, "hubert")
    assert a2m.use_emo and a2m.use_sc and a2m.use_eye_open and a2m.use_eye_ball

    opts = cfg.setup_options()
    assert opts.online_mode is True and opts.overlap_v2 == 70 and opts.sampling_timesteps == 10
    assert opts.fix_kp_cond == 1 and opts.fix_kp_cond_dim == (0, 202) and opts.smo_k_d == 3
    assert opts.fade_type == "d0" and opts.overall_ctrl_info == {"delta_pitch": 2}
    assert opts.fade_out_keys == ("exp",)
    # arrays and ch_info are the pkl's objects, verbatim
    assert opts.emo is cfg.default_kwargs["emo"]
    assert opts.ch_info is cfg.default_kwargs["ch_info"]
    assert opts.delta_eye_arr is cfg.default_kwargs["delta_eye_arr"]
    expected = build_cfg_dict("trt_online", seed=0)["default_kwargs"]
    np.testing.assert_array_equal(opts.v_min_max_for_clip, expected["v_min_max_for_clip"])
    np.testing.assert_array_equal(opts.emo, expected["emo"])


def test_pytorch_pkl_engines(tree) -> None:
    pkls, _, pt_root = tree
    cfg = load_cfg(pkls["pytorch"], pt_root)
    for model in (
        cfg.appearance_extractor,
        cfg.motion_extractor,
        cfg.warp_network,
        cfg.decoder,
        cfg.stitch_network,
        cfg.lmdm,
    ):
        assert model.engine == "torch" and model.model_path.suffix == ".pth"
    for model in (cfg.insightface_det, cfg.landmark106, cfg.landmark203, cfg.wav2feat):
        assert model.engine == "ori" and model.force_ori_type
    assert cfg.landmark478.engine == "ori"
    assert cfg.landmark478.task_path == pt_root / "aux_models/face_landmarker.task"
    assert cfg.landmark478.blaze_face_model_path is None  # empty paths are not resolved
    assert cfg.lmdm.model_path == pt_root / "models/lmdm_v0.4_hubert.pth"


def test_existing_absolute_path_is_kept(tree, tmp_path) -> None:
    pkls, trt_root, _ = tree
    elsewhere = tmp_path / "elsewhere" / "my_decoder.onnx"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")
    cfg = load_cfg(pkls["trt"], trt_root, replace_cfg={"base_cfg": {"decoder_cfg": {"model_path": str(elsewhere)}}})
    assert cfg.decoder.model_path == elsewhere and cfg.decoder.engine == "onnx"
    cfg = load_cfg(pkls["trt"], trt_root, replace_cfg={"audio2motion_cfg": {"device": "cpu"}})
    assert cfg.lmdm.device == "cpu"


def test_option_precedence(tree) -> None:
    pkls, trt_root, _ = tree
    cfg = load_cfg(pkls["trt_online"], trt_root)
    opts = cfg.setup_options(overlap_v2=75, emo=3)
    assert opts.overlap_v2 == 75 and opts.emo == 3  # caller wins
    assert opts.sampling_timesteps == 10  # pkl beats code default (50)
    offline = load_cfg(pkls["trt"], trt_root).setup_options()
    assert offline.max_size == 1920 and offline.crop_scale == 2.3  # not in that pkl: code defaults
    assert offline.overlap_v2 == 10 and offline.online_mode is False
    bare = merge_setup_options({}, {})
    for name in SETUP_OPTION_NAMES:
        assert hasattr(bare, name)
    assert bare.sampling_timesteps == 50 and bare.emo == 4 and bare.ch_info is None
    assert bare.fade_out_keys == ("exp",) and bare.fix_kp_cond_dim is None
    extra = merge_setup_options({}, {"some_new_key": 1, "N_d": np.int64(7)})
    assert extra.extra == {"some_new_key": 1} and extra.N_d == 7 and type(extra.N_d) is int


@pytest.mark.parametrize(
    ("suffix", "kind"),
    [(".onnx", "onnx"), (".engine", "tensorrt"), (".trt", "tensorrt"), (".pt", "torch"), (".pth", "torch")],
)
def test_engine_by_suffix(suffix, kind) -> None:
    assert engine_kind_for(f"a/model{suffix}") == kind
    assert engine_kind_for(f"a/model{suffix}", force_ori_type=True) == "ori"


def test_unknown_suffix() -> None:
    with pytest.raises(ConfigError, match="model.bin"):
        engine_kind_for("model.bin")


# -- errors ---------------------------------------------------------------------------------------------


def _write(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


def test_missing_pkl(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.pkl"):
        load_cfg(tmp_path / "nope.pkl", tmp_path)


def test_not_a_pickle(tmp_path) -> None:
    p = tmp_path / "junk.pkl"
    p.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ConfigError, match="junk.pkl"):
        load_cfg(p, tmp_path)


def test_truncated_pickle(tmp_path) -> None:
    p = tmp_path / "cut.pkl"
    full = pickle.dumps(build_cfg_dict("trt_online"))
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(ConfigError, match="cut.pkl"):
        read_cfg_dict(p)


def test_pickle_of_wrong_type(tmp_path) -> None:
    with pytest.raises(ConfigError, match="list.pkl.*list"):
        load_cfg(_write(tmp_path / "list.pkl", [1, 2, 3]), tmp_path)


def test_missing_top_level_key(tmp_path) -> None:
    cfg = build_cfg_dict("trt")
    del cfg["default_kwargs"]
    with pytest.raises(ConfigError, match="default_kwargs"):
        load_cfg(_write(tmp_path / "c.pkl", cfg), tmp_path)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c["base_cfg"].pop("warp_network_cfg"), "warp_network_cfg"),
        (lambda c: c["base_cfg"]["decoder_cfg"].pop("model_path"), "model_path"),
        (lambda c: c["base_cfg"]["decoder_cfg"].update(model_path=3), "decoder_cfg"),
        (lambda c: c["base_cfg"].update(decoder_cfg="decoder.onnx"), "decoder_cfg"),
        (lambda c: c["base_cfg"]["decoder_cfg"].update(model_path="decoder.bin"), "decoder.bin"),
        (lambda c: c["base_cfg"]["decoder_cfg"].update(force_ori_type=True), "force_ori_type"),
        (lambda c: c["audio2motion_cfg"].pop("seq_frames"), "seq_frames"),
        (lambda c: c["audio2motion_cfg"].update(use_emo="yes"), "use_emo"),
        (lambda c: c["audio2motion_cfg"].update(audio_feat_dim=-1), "audio_feat_dim"),
        (lambda c: c["audio2motion_cfg"].update(w2f_type="wavlm"), "w2f_type"),
        (lambda c: c.update(default_kwargs=[1]), "default_kwargs"),
        (lambda c: c.update(base_cfg=None), "base_cfg"),
        (lambda c: c["base_cfg"]["landmark478_cfg"].update(face_mesh_model_path=""), "face_mesh_model_path"),
    ],
)
def test_malformed_sections(tmp_path, mutate, match) -> None:
    cfg = build_cfg_dict("trt")
    _touch_models(build_cfg_dict("trt"), tmp_path)
    mutate(cfg)
    path = _write(tmp_path / "bad.pkl", cfg)
    with pytest.raises(ConfigError, match=match) as info:
        load_cfg(path, tmp_path)
    assert "bad.pkl" in str(info.value)


def test_missing_model_file_names_the_file(tree) -> None:
    pkls, trt_root, _ = tree
    (trt_root / "stitch_network_fp16.engine").unlink()
    with pytest.raises(ConfigError, match="stitch_network_fp16.engine"):
        load_cfg(pkls["trt"], trt_root)
    cfg = load_cfg(pkls["trt"], trt_root, check_files=False)
    assert cfg.stitch_network.model_path == trt_root / "stitch_network_fp16.engine"


def test_missing_lmdm_file(tree) -> None:
    pkls, _, pt_root = tree
    (pt_root / "models" / "lmdm_v0.4_hubert.pth").unlink()
    with pytest.raises(ConfigError, match="lmdm_v0.4_hubert.pth"):
        load_cfg(pkls["pytorch"], pt_root)


def test_ori_landmark478_needs_task_path(tree) -> None:
    pkls, _, pt_root = tree
    with pytest.raises(ConfigError, match="task_path"):
        load_cfg(
            pkls["pytorch"],
            pt_root,
            replace_cfg={"base_cfg": {"landmark478_cfg": {"task_path": "", "force_ori_type": True, "device": "cuda"}}},
        )


def test_replace_cfg_unknown_section(tree) -> None:
    pkls, trt_root, _ = tree
    with pytest.raises(ConfigError, match="nonsense"):
        load_cfg(pkls["trt"], trt_root, replace_cfg={"nonsense": {"a": 1}})
