"""Setup options: the typed model, its checks, and the error each bad value gives."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ditto.backends.talkinghead.options import SETUP_OPTION_NAMES, SetupOptions, merge_setup_options
from ditto.errors import ConfigError


def test_every_option_is_a_field() -> None:
    expected = {
        "online_mode",
        "max_size",
        "template_n_frames",
        "crop_scale",
        "crop_vx_ratio",
        "crop_vy_ratio",
        "crop_flag_do_rot",
        "smo_k_s",
        "emo",
        "eye_f0_mode",
        "ch_info",
        "overlap_v2",
        "fix_kp_cond",
        "fix_kp_cond_dim",
        "sampling_timesteps",
        "v_min_max_for_clip",
        "smo_k_d",
        "N_d",
        "use_d_keys",
        "relative_d",
        "drive_eye",
        "delta_eye_arr",
        "delta_eye_open_n",
        "fade_type",
        "fade_out_keys",
        "flag_stitching",
        "ctrl_info",
        "overall_ctrl_info",
    }
    assert set(SETUP_OPTION_NAMES) == expected
    with pytest.raises(ValidationError, match="frozen"):
        SetupOptions().overlap_v2 = 3  # frozen


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sampling_timesteps", "10"),
        ("sampling_timesteps", 0),
        ("overlap_v2", 1.5),
        ("online_mode", 1),
        ("fade_type", "x"),
        ("fix_kp_cond_dim", [0]),
        ("emo", "happy"),
        ("ch_info", [1]),
        ("v_min_max_for_clip", np.zeros(3)),
        ("fade_out_keys", "exp"),
        ("crop_scale", "2"),
    ],
)
def test_bad_option_types(name, value) -> None:
    with pytest.raises(ConfigError, match=name):
        merge_setup_options({name: value}, {})
    with pytest.raises(ConfigError, match="my.pkl"):
        merge_setup_options({}, {name: value}, pkl_name="my.pkl")


def test_unknown_caller_option() -> None:
    with pytest.raises(ConfigError, match="overlap_v3"):
        merge_setup_options({"overlap_v3": 1}, {})


def test_numpy_scalars_become_python_and_objects_are_kept() -> None:
    emo, clip, ch_info, ctrl = np.zeros((600, 8)), np.zeros((4, 265)), {"sc": np.zeros(63)}, {"delta_pitch": 2}
    opts = merge_setup_options(
        {"emo": emo},
        {
            "v_min_max_for_clip": clip,
            "ch_info": ch_info,
            "overall_ctrl_info": ctrl,
            "online_mode": np.bool_(True),
            "crop_scale": np.float32(2.5),
            "fix_kp_cond_dim": np.array([0, 202]),
            "fade_out_keys": ["exp"],
            "crop_vx_ratio": 0,
        },
    )
    assert opts.emo is emo and opts.v_min_max_for_clip is clip and opts.ch_info is ch_info
    assert opts.overall_ctrl_info is ctrl
    assert opts.online_mode is True and type(opts.crop_scale) is float and opts.crop_scale == 2.5
    assert opts.fix_kp_cond_dim == (0, 202) and type(opts.fix_kp_cond_dim[0]) is int
    assert opts.fade_out_keys == ("exp",) and type(opts.crop_vx_ratio) is float
    assert opts == opts and opts != SetupOptions()  # identity, arrays have no field-wise ==
    assert len({opts, SetupOptions()}) == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fix_kp_cond_dim", {0, 202}),
        ("fix_kp_cond_dim", [0, 1.5]),
        ("fade_out_keys", {"exp"}),
        ("fade_out_keys", ["exp", 3]),
        ("delta_eye_open_n", True),
        ("emo", True),
        ("drive_eye", 0),
        ("fix_kp_cond", -1),
        ("sampling_timesteps", 1001),
        ("ctrl_info", None),
        ("overall_ctrl_info", []),
        ("use_d_keys", "exp"),
        ("max_size", np.float64(512.0)),
    ],
)
def test_more_bad_values(name, value) -> None:
    with pytest.raises(ConfigError, match=f"caller setup kwargs: setup option '{name}'"):
        merge_setup_options({name: value}, {})


def test_every_bad_option_is_named_with_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        merge_setup_options({"fade_type": "x"}, {"overlap_v2": 1.5, "fade_type": "d0"}, pkl_name="my.pkl")
    message = str(info.value)
    assert "my.pkl default_kwargs: setup option 'overlap_v2'" in message
    assert "caller setup kwargs: setup option 'fade_type'" in message
    # a bad pkl value the caller overrides is never looked at
    assert merge_setup_options({"overlap_v2": 70}, {"overlap_v2": 1.5}).overlap_v2 == 70
