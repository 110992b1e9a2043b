"""Per-frame LMDM conditioning rows (the upstream ``ConditionHandler``).

A condition row for absolute output frame ``i`` is::

    [ audio 1024 | emo 8 | eye_open 2 | eye_ball 6 | sc 63 ]   -> 1103 floats

* ``i`` may be negative (the online silence prefix); every per-frame lookup uses ``max(i, 0)``.
* emo rows cycle with the period ``m`` of the emo table (row ``max(i,0) % m``).
* eye rows ping-pong over the source frames (row ``mirror_index(max(i,0), n)``), or row 0 when the
  source has one frame or ``eye_f0_mode`` is set.
* ``sc`` (canonical keypoints of the conditioning identity, frame 0) is the same on every row.

The conditioning identity is the avatar itself, or the cfg pkl's ``ch_info`` when one is given
(then the user's eye/sc never reach the LMDM; docs/pipeline.md §14).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto.backends.talkinghead.pipeline.stages import (
    AUDIO_FEAT_DIM,
    EMO_DIM,
    EYE_BALL_DIM,
    EYE_OPEN_DIM,
    SC_DIM,
    MotionInfo,
    SourceInfo,
)

__all__ = [
    "ConditionSource",
    "ConditionHandler",
    "condition_source_from_source",
    "condition_source_from_ch_info",
    "cond_width",
    "emo_from_labels",
    "parse_emo",
]

_EMO_LOGIT = 8.0  # logit given to each chosen label before the softmax (upstream _get_emo_avg)


def emo_from_labels(labels: int | Sequence[int]) -> np.ndarray:
    """Emotion vector for one label or a set of labels: logit 8 on each, 0 elsewhere, softmax.

    Returns (8,) float32; one label puts ~0.9977 on it.
    """
    logits = np.zeros(EMO_DIM, dtype=np.float32)
    chosen = [labels] if isinstance(labels, (int, numbers.Integral)) else list(labels)
    for label in chosen:
        logits[int(label)] = _EMO_LOGIT
    shifted = logits - logits.max()
    e = np.exp(shifted)
    return (e / e.sum()).astype(np.float32)


def _is_label(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def parse_emo(emo: Any, seq_len: int = -1) -> np.ndarray:
    """Normalise an ``emo`` option into an (m,8) float32 table.

    Accepted forms (checked in this order, as upstream):
      * (m,8) array (numpy or torch): used as is (the online pkl ships a (600,8) table);
      * int label 0..7;
      * list/tuple of 1..7 int labels: one averaged vector;
      * list of label lists: one vector per row.

    With ``seq_len > 0`` the table is fitted to exactly ``seq_len`` rows (a single row repeated,
    a longer table truncated, a shorter one rejected).

    Raises:
        ValueError: unsupported form or a table shorter than ``seq_len``.
    """
    if isinstance(emo, Tensor):
        emo = emo.detach().cpu().numpy()
    if isinstance(emo, np.ndarray) and emo.ndim == 2 and emo.shape[1] == EMO_DIM:
        table = emo.astype(np.float32, copy=False)
    elif _is_label(emo) and 0 <= int(emo) < EMO_DIM:
        table = emo_from_labels(int(emo)).reshape(1, EMO_DIM)
    elif isinstance(emo, (list, tuple)) and 0 < len(emo) < EMO_DIM and _is_label(emo[0]):
        table = emo_from_labels(emo).reshape(1, EMO_DIM)
    elif isinstance(emo, list) and emo and isinstance(emo[0], (list, tuple)):
        table = np.stack([emo_from_labels(row) for row in emo], 0)
    else:
        raise ValueError(f"unsupported emo value: {emo!r}")

    if seq_len > 0:
        if len(table) == seq_len:
            return table
        if len(table) == 1:
            return np.repeat(table, seq_len, axis=0)
        if len(table) > seq_len:
            return table[:seq_len]
        raise ValueError(f"emo table has {len(table)} rows, cannot fill {seq_len}")
    return table


def cond_width(*, use_emo: bool, use_eye_open: bool, use_eye_ball: bool, use_sc: bool) -> int:
    """Width of a condition row for the ``audio2motion_cfg`` ``use_*`` flags (1103 with every flag on)."""
    return (
        AUDIO_FEAT_DIM
        + (EMO_DIM if use_emo else 0)
        + (EYE_OPEN_DIM if use_eye_open else 0)
        + (EYE_BALL_DIM if use_eye_ball else 0)
        + (SC_DIM if use_sc else 0)
    )


@dataclass(frozen=True, slots=True)
class ConditionSource:
    """The identity the LMDM is conditioned on (the avatar, or ``ch_info``)."""

    x_s_info_0: MotionInfo  # frame-0 motion; seeds Audio2Motion's kp_cond and the ch scale ratio
    sc: Tensor  # (63,) float32
    eye_open: Tensor  # (n,2) float32, one row per source frame
    eye_ball: Tensor  # (n,6) float32, one row per source frame


def condition_source_from_source(source: SourceInfo) -> ConditionSource:
    """Conditioning identity taken from the registered avatar itself."""
    return ConditionSource(
        x_s_info_0=source.frames[0].x_s_info,
        sc=source.sc.reshape(SC_DIM).float(),
        eye_open=torch.cat([f.eye_open.reshape(1, EYE_OPEN_DIM) for f in source.frames], 0).float(),
        eye_ball=torch.cat([f.eye_ball.reshape(1, EYE_BALL_DIM) for f in source.frames], 0).float(),
    )


def condition_source_from_ch_info(ch_info: Mapping[str, Any], device: torch.device | str) -> ConditionSource:
    """Conditioning identity from the cfg pkl's ``ch_info`` dict (numpy arrays).

    Keys used: ``x_s_info_lst`` (list of motion dicts; entry 0 used), ``sc`` (63,),
    ``eye_open_lst`` (list of (1,2)), ``eye_ball_lst`` (list of (1,6)).
    """

    def stack(rows: Sequence[Any], width: int) -> Tensor:
        arr = np.concatenate([np.asarray(r, dtype=np.float32).reshape(-1, width) for r in rows], 0)
        return torch.as_tensor(arr, device=device)

    return ConditionSource(
        x_s_info_0=MotionInfo.from_mapping(ch_info["x_s_info_lst"][0], device=device),
        sc=torch.as_tensor(np.asarray(ch_info["sc"], dtype=np.float32).reshape(SC_DIM), device=device),
        eye_open=stack(ch_info["eye_open_lst"], EYE_OPEN_DIM),
        eye_ball=stack(ch_info["eye_ball_lst"], EYE_BALL_DIM),
    )


class ConditionHandler:
    """Builds (n, cond_dim) condition rows for runs of absolute frame indices.

    Every lookup table lives on the device of ``source``; a call launches only a few small
    kernels (no host round trip).
    """

    def __init__(
        self,
        source: ConditionSource,
        emo: Any = 4,
        *,
        eye_f0_mode: bool = False,
        use_emo: bool = True,
        use_eye_open: bool = True,
        use_eye_ball: bool = True,
        use_sc: bool = True,
    ) -> None:
        """Args:
        source: conditioning identity (``condition_source_from_*``).
        emo: ``emo`` setup option (see :func:`parse_emo`); upstream code default 4 (Neutral).
        eye_f0_mode: use source frame 0's eye rows for every frame (video sources).
        use_*: ``audio2motion_cfg`` flags (all True for the shipped LMDM).
        """
        self.device = source.sc.device
        self.source = source
        self.eye_f0_mode = bool(eye_f0_mode)
        self.use_emo = use_emo
        self.use_eye_open = use_eye_open
        self.use_eye_ball = use_eye_ball
        self.use_sc = use_sc
        self._emo_table = torch.as_tensor(parse_emo(emo), device=self.device)  # (m,8)
        self._sc_row = source.sc.reshape(1, SC_DIM).float()

    @property
    def cond_dim(self) -> int:
        """Width of a condition row (1103 with every flag on)."""
        return cond_width(
            use_emo=self.use_emo, use_eye_open=self.use_eye_open, use_eye_ball=self.use_eye_ball, use_sc=self.use_sc
        )

    def _eye_rows(self, table: Tensor, idx: Tensor) -> Tensor:
        n = table.shape[0]
        if n == 1 or self.eye_f0_mode:
            return table[:1].expand(idx.shape[0], -1)
        turn = torch.div(idx, n, rounding_mode="floor")
        rest = idx - turn * n
        mirrored = torch.where(turn % 2 == 0, rest, n - rest - 1)
        return table.index_select(0, mirrored)

    def __call__(self, aud_feat: Tensor, start_index: int, emo: Any = None) -> Tensor:
        """Condition rows for frames ``start_index .. start_index + n - 1``.

        Args:
            aud_feat: (n,1024) float32 HuBERT features of those frames (on the handler's device).
            start_index: absolute frame index of row 0 (negative inside the online silence prefix).
            emo: optional per-call emo override, fitted to n rows like upstream.

        Returns:
            (n, cond_dim) float32.
        """
        n = aud_feat.shape[0]
        idx = torch.arange(start_index, start_index + n, device=self.device).clamp_min(0)
        parts = [aud_feat.float()]
        if self.use_emo:
            if emo is not None:
                parts.append(torch.as_tensor(parse_emo(emo, n), device=self.device))
            else:
                m = self._emo_table.shape[0]
                parts.append(self._emo_table.index_select(0, idx % m))
        if self.use_eye_open:
            parts.append(self._eye_rows(self.source.eye_open, idx))
        if self.use_eye_ball:
            parts.append(self._eye_rows(self.source.eye_ball, idx))
        if self.use_sc:
            parts.append(self._sc_row.expand(n, -1))
        return torch.cat(parts, dim=1)
