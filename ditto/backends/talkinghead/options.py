"""Setup options of the streaming SDK (docs/pipeline.md §3.2) as a typed, self-validating model.

:class:`SetupOptions` is a frozen pydantic model. Its field types are the checks:
bools, ints and numbers accept the numpy scalars a pkl holds and come out as Python
scalars (a bool is neither an int nor a number, an int is not a bool); ``Field``
bounds and ``Literal`` state the allowed values. Arrays, ``ch_info`` and the control
dicts are checked by type only and kept as the very objects given (``InstanceOf``):
the pkl's arrays and reference identity cannot be rebuilt.

:func:`merge_setup_options` applies the precedence — caller kwargs, then the pkl's
``default_kwargs``, then the code defaults — and turns a validation failure into a
:class:`~ditto.errors.ConfigError` that names the option and where the value came
from. Keys of the pkl that no field knows are kept in ``extra`` (upstream ignores
them too); an unknown caller key is an error, since a typo would otherwise be
silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeAlias

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    Strict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from ditto.errors import ConfigError


def _numpy_scalar_to_python(value: Any) -> Any:
    """``np.int64(7)`` → ``7``, ``np.bool_(True)`` → ``True``; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _expected(description: str) -> WrapValidator:
    """Report any failure of the wrapped type as one error, "Input should be <description>".

    Used on unions, whose per-member errors would otherwise be listed one by one.
    """

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("setup_option", "Input should be {expected}", {"expected": description}) from None

    return WrapValidator(validate)


def _only(*types: type) -> BeforeValidator:
    """Let only None and instances of ``types`` reach the lax container validator inside.

    (A lax tuple would also take a set, a dict or a generator.)
    """

    def validate(value: Any) -> Any:
        if value is not None and not isinstance(value, types):
            raise PydanticCustomError(
                "setup_option", "Input should be one of {expected}", {"expected": ", ".join(t.__name__ for t in types)}
            )
        return value

    return BeforeValidator(validate)


def _check(predicate: Callable[[Any], bool], description: str) -> AfterValidator:
    def validate(value: Any) -> Any:
        if not predicate(value):
            raise PydanticCustomError("setup_option", "Input should be {expected}", {"expected": description})
        return value

    return AfterValidator(validate)


# Scalars: numpy scalars become Python ones, then strict checks (1 is not a bool, True is not an int).
Bool = Annotated[bool, Strict(), BeforeValidator(_numpy_scalar_to_python)]
Int = Annotated[int, Strict(), BeforeValidator(_numpy_scalar_to_python)]
Number = Annotated[float, Strict(), BeforeValidator(_numpy_scalar_to_python)]  # an int is accepted
#: A 2-D array, kept as the same object.
Array2D = Annotated[InstanceOf[np.ndarray], _check(lambda a: a.ndim == 2, "a 2-D numpy array")]
#: Dicts and lists kept as the same objects.
AnyMapping: TypeAlias = InstanceOf[Mapping]
AnyList: TypeAlias = InstanceOf[list] | InstanceOf[tuple]


class SetupOptions(BaseModel):
    """Setup options of the streaming SDK (docs/pipeline.md §3.2), defaults = official code defaults.

    Frozen: assigning a field raises :class:`pydantic.ValidationError`. Arrays and
    dicts are the same objects as given (those of the pkl). Equality and hashing are
    by identity, as field-wise comparison of arrays has no single truth value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    online_mode: Bool = False  # streaming windowing; needs hubert
    max_size: Int = 1920  # source longest side cap (px)
    template_n_frames: Int = -1  # max source-video frames (-1: all)
    crop_scale: Number = 2.3  # 512-crop side = square lmk203 bbox × scale
    crop_vx_ratio: Number = 0.0  # ignored upstream (never forwarded)
    crop_vy_ratio: Number = -0.125  # vertical crop shift × size
    crop_flag_do_rot: Bool = True  # rotate crop upright
    smo_k_s: Int = 13  # mean-filter width over source motion (video)
    # a label | labels | per-frame labels | (m, 8) rows
    emo: Annotated[Int | AnyList | InstanceOf[np.ndarray], _expected("an int, a list of labels or an (m, 8) array")] = 4
    eye_f0_mode: Bool = False  # video: frame-0 eye info everywhere
    ch_info: Annotated[AnyMapping | None, _expected("a dict or None")] = None  # stored reference identity
    overlap_v2: Annotated[Int, Field(ge=0)] = 10  # overlap frames between 80-frame windows
    fix_kp_cond: Annotated[Int, Field(ge=0)] = 0  # every k-th window reset cond_frame to source (0: never)
    # dims [start, end) kept on reset
    fix_kp_cond_dim: Annotated[
        tuple[Int, Int] | None, _only(list, tuple, np.ndarray), _expected("None or [start, end]")
    ] = None
    sampling_timesteps: Annotated[Int, Field(ge=1, le=1000)] = 50  # DDIM steps per window
    # (4, 265): rows 0/1 = min/max clip
    v_min_max_for_clip: Annotated[Array2D | None, _expected("None or a 2-D numpy array")] = None
    smo_k_d: Int = 3  # mean-filter width over generated dims 0..201
    N_d: Int = -1  # number of output frames (-1: unknown)
    # None | sequence of keys | {key: weight}
    use_d_keys: Annotated[AnyMapping | AnyList | None, _expected("None, a list of keys or a {key: weight} dict")] = None
    relative_d: Bool = True  # x_d = x_s + (d − d0)·w
    drive_eye: Bool | None = None  # None: True for images, False for videos
    delta_eye_arr: Annotated[Array2D | None, _expected("None or a 2-D numpy array")] = None  # (15, 63) blinks
    # -1 none, 0 random 60–100, >0 fixed, list cyclic
    delta_eye_open_n: Annotated[Int | AnyList, _expected("an int or a list of ints")] = 0
    fade_type: Literal["", "d0", "s"] = ""
    fade_out_keys: Annotated[
        tuple[Annotated[str, Strict()], ...], _only(list, tuple), _expected("a list of key names")
    ] = ("exp",)
    flag_stitching: Bool = True
    # {frame: ctrl kwargs} or list
    ctrl_info: Annotated[AnyMapping | AnyList, _expected("a dict or a list")] = Field(default_factory=dict)
    overall_ctrl_info: Annotated[AnyMapping, _expected("a dict")] = Field(default_factory=dict)  # every frame
    extra: AnyMapping = Field(default_factory=dict)  # pkl keys this code does not know, verbatim

    __eq__ = object.__eq__
    __hash__ = object.__hash__


SETUP_OPTION_NAMES: tuple[str, ...] = tuple(name for name in SetupOptions.model_fields if name != "extra")


def merge_setup_options(
    caller_kwargs: Mapping[str, Any], pkl_defaults: Mapping[str, Any], *, pkl_name: str = "cfg pkl"
) -> SetupOptions:
    """Caller kwargs win, then the pkl's default_kwargs, then the code defaults.

    Unknown keys in the pkl are kept in ``extra``; unknown caller keys are an
    error (a typo would otherwise be silently ignored).

    Raises:
        ConfigError: an unknown caller option, or an option of the wrong type;
            the message names each bad option and whether the caller or the pkl gave it.
    """
    unknown = sorted(set(caller_kwargs) - set(SETUP_OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown setup option(s) {unknown}; known: {', '.join(SETUP_OPTION_NAMES)}")
    values = {name: value for name, value in pkl_defaults.items() if name in SETUP_OPTION_NAMES}
    values.update(caller_kwargs)
    extra = {name: value for name, value in pkl_defaults.items() if name not in SETUP_OPTION_NAMES}
    try:
        return SetupOptions(**values, extra=MappingProxyType(extra))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0])
            where = "caller setup kwargs" if name in caller_kwargs else f"{pkl_name} default_kwargs"
            value = values[name]
            problems.append(f"{where}: setup option {name!r}: {error['msg']}, got {type(value).__name__} {value!r:.80}")
        raise ConfigError("; ".join(problems)) from None
