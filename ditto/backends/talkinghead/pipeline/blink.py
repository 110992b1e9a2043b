"""Blink schedule and fade-in/out controls (upstream ``motion_stitch._set_eye_blink_idx`` and
``StreamSDK.setup_Nd``).

A blink schedule is one template-row index per output frame: 0 while the eyes are idle and
0..blink_len-1 across a blink (``delta_eye_arr`` has blink_len = 15 rows of eye-keypoint exp
deltas). The first blink starts after a 60..100-frame gap; after each blink the next gap is drawn
again; no blink starts in the last ``max(final_gap, blink_len)`` frames. Upstream draws the gaps
from Python's global ``random`` (unseeded); here the caller passes a seeded ``random.Random``,
drawn in the same order (start gap, end gap, then one per blink).
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BLINK_GAP_MIN",
    "BLINK_GAP_MAX",
    "UNBOUNDED_SCHEDULE_FRAMES",
    "blink_schedule",
    "schedule_frames",
    "fade_alphas",
    "apply_fades",
    "ctrl_for_frame",
]

BLINK_GAP_MIN = 60  # frames of open eyes between blinks (inclusive, random.randint)
BLINK_GAP_MAX = 100
UNBOUNDED_SCHEDULE_FRAMES = 3000  # schedule length when N_d = -1; indexed modulo its length


def schedule_frames(n_d: int) -> int:
    """Schedule length for the ``N_d`` option: 3000 when unknown (-1), else N_d."""
    return UNBOUNDED_SCHEDULE_FRAMES if n_d == -1 else int(n_d)


def blink_schedule(
    n_frames: int,
    blink_len: int = 15,
    open_n: int | Sequence[int] = 0,
    *,
    rng: random.Random,
) -> list[int]:
    """Per-frame template-row indices (0 = idle) for ``n_frames`` frames.

    Args:
        n_frames: schedule length (``schedule_frames(N_d)``).
        blink_len: rows of ``delta_eye_arr`` (15).
        open_n: ``delta_eye_open_n``: -1 no blinks; 0 random gaps 60..100; > 0 fixed gap;
            a list of gaps used cyclically (first entry = first gap, last entry = end guard).
        rng: seeded generator (only used when gaps are random).

    Raises:
        ValueError: unsupported ``open_n``.
    """
    idx = [0] * max(int(n_frames), 0)
    if isinstance(open_n, numbers.Integral) and not isinstance(open_n, bool):
        gap = int(open_n)
        if gap < 0:
            return idx
        gaps: list[int] = [gap] if gap > 0 else []
    elif isinstance(open_n, (list, tuple)):
        gaps = [int(g) for g in open_n]
    else:
        raise ValueError(f"unsupported delta_eye_open_n: {open_n!r}")

    first_gap = gaps[0] if gaps else rng.randint(BLINK_GAP_MIN, BLINK_GAP_MAX)
    end_gap = gaps[-1] if gaps else rng.randint(BLINK_GAP_MIN, BLINK_GAP_MAX)
    last_start = len(idx) - max(end_gap, blink_len)  # exclusive bound on blink starts
    pos = first_gap
    gap_i = 1
    while pos < last_start:
        idx[pos : pos + blink_len] = range(blink_len)
        if gaps:
            gap = gaps[gap_i % len(gaps)]
            gap_i += 1
        else:
            gap = rng.randint(BLINK_GAP_MIN, BLINK_GAP_MAX)
        pos += blink_len + gap
    return idx


def fade_alphas(n_frames: int, fade_in: int = -1, fade_out: int = -1) -> dict[int, float]:
    """``fade_alpha`` per frame from the run options ``fade_in`` / ``fade_out`` (frames).

    fade_in > 0: frame i < fade_in gets i / fade_in. fade_out > 0: frames
    ``n-fade_out-1 .. n-1`` fall linearly from 1 to 0 (later entries win, as upstream).
    """
    out: dict[int, float] = {}
    if fade_in > 0:
        for i in range(fade_in):
            out[i] = i / fade_in
    if fade_out > 0:
        first = n_frames - fade_out - 1
        last = n_frames - 1
        for i in range(first, n_frames):
            out[i] = max((last - i) / (last - first), 0)
    return out


def apply_fades(
    ctrl_info: Mapping[int, Mapping[str, Any]] | Sequence[Mapping[str, Any]] | None,
    n_frames: int,
    fade_in: int = -1,
    fade_out: int = -1,
) -> dict[int, dict[str, Any]]:
    """Per-frame control dict with ``fade_alpha`` merged in (a new dict; input untouched)."""
    if ctrl_info is None:
        merged: dict[int, dict[str, Any]] = {}
    elif isinstance(ctrl_info, Mapping):
        merged = {int(k): dict(v) for k, v in ctrl_info.items()}
    else:
        merged = {i: dict(v) for i, v in enumerate(ctrl_info)}
    for i, alpha in fade_alphas(n_frames, fade_in, fade_out).items():
        merged.setdefault(i, {})["fade_alpha"] = alpha
    return merged


def ctrl_for_frame(
    ctrl_info: Mapping[int, Mapping[str, Any]] | Sequence[Mapping[str, Any]] | None, index: int
) -> dict[str, Any]:
    """Control kwargs of output frame ``index`` ({} when none / out of range)."""
    if ctrl_info is None:
        return {}
    if isinstance(ctrl_info, Mapping):
        return dict(ctrl_info.get(index, {}))
    if 0 <= index < len(ctrl_info):
        return dict(ctrl_info[index])
    return {}
