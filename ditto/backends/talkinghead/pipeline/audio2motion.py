"""Audio2Motion: the window logic around the LMDM sampler (upstream ``audio2motion.py`` and the
``audio2motion`` workers of ``stream_pipeline_{offline,online}.py``).

Motion vector layout (265 floats per frame, ``kp`` excluded)::

    [ scale-1 (1) | pitch logits (66) | yaw (66) | roll (66) | t (3) | exp (63) ]
      0             1..66               67..132    133..198    199..201  202..264

The LMDM generates 80-frame windows. Consecutive windows overlap by ``overlap`` frames, so each
new window contributes ``V = 80 - overlap`` new frames. With result ``R`` (L frames) and window
prediction ``P`` (80 frames), a later window does, with ``F`` = fuse length::

    R[L-F+k] = R[L-F+k]*(1 - k/F) + P[80-V-F+k]*(k/F)      k = 0..F-1
    R = R ++ P[80-V:]                                     (L -> L + V)
    smooth rows [L+V-V-F, L+V-V+1) over dims 0..201 (mean filter, width smo_k_d, edge-truncated)

then sets the next window's conditioning frame ``kp_cond`` from ``R[L+V-overlap-1]``. ``F`` is
``overlap`` offline and ``min(overlap, V)`` online. The first window is just ``P``, smoothed.

All arithmetic is float32 torch on the caller's device, in the same operation order as upstream
(sums of the mean filter are accumulated left to right, then divided by the count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto.backends.talkinghead.pipeline.condition import ConditionHandler
from ditto.backends.talkinghead.pipeline.stages import (
    AUDIO_FEAT_DIM,
    MOTION_DIM,
    MotionChunk,
    MotionInfo,
    float32_array,
)

__all__ = [
    "SMOOTH_DIMS",
    "SampleWindow",
    "motion_to_vector",
    "vector_to_arrays",
    "vector_to_motion",
    "clip_motion",
    "as_v_min_max",
    "smooth_motion",
    "MotionWindowing",
    "generate_motion_offline",
    "iter_motion_offline",
    "offline_window_starts",
    "OnlineAudio2Motion",
    "MotionEase",
]

SampleWindow = Callable[[Tensor, Tensor], Tensor]
"""``sample_window(kp_cond (1,265), cond (1,80,D)) -> (1,80,265)``: one full DDIM sampling."""

SMOOTH_DIMS = 202  # scale + pose logits + t are smoothed; exp (202..264) is not
_LAYOUT = (("scale", 1), ("pitch", 66), ("yaw", 66), ("roll", 66), ("t", 3), ("exp", 63))


def motion_to_vector(info: MotionInfo) -> Tensor:
    """MotionInfo (pose as logits) -> (265,) float32 motion vector (scale stored minus 1)."""
    d = info.as_dict()
    parts = []
    for key, width in _LAYOUT:
        v = d[key].reshape(width).float()
        parts.append(v - 1 if key == "scale" else v)
    return torch.cat(parts, 0)


def vector_to_arrays(row: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """(265,) or (1,265) host motion vector -> the MotionInfo fields as (1, width) float32 arrays
    (views of a float32 host row, scale + 1 a copy; no kp): what :class:`MotionStitcher` reads per frame."""
    flat = float32_array(row).reshape(-1)
    if flat.shape[0] < MOTION_DIM:
        raise ValueError(f"motion vector has {flat.shape[0]} values, need {MOTION_DIM}")
    out: dict[str, np.ndarray] = {}
    start = 0
    for key, width in _LAYOUT:
        v = flat[start : start + width].reshape(1, width)
        out[key] = v + np.float32(1) if key == "scale" else v
        start += width
    return out


def vector_to_motion(row: Tensor) -> MotionInfo:
    """(265,) or (1,265) host motion vector -> MotionInfo with (1, width) views (scale + 1; kp None)."""
    return MotionInfo(**{key: torch.from_numpy(value) for key, value in vector_to_arrays(row).items()})


def as_v_min_max(v_min_max: Any, device: torch.device | str) -> Tensor | None:
    """``v_min_max_for_clip`` pkl option ((4,265) array or None) -> (2,265) float32 tensor."""
    if v_min_max is None:
        return None
    arr = torch.as_tensor(
        np.asarray(v_min_max, dtype=np.float32) if not isinstance(v_min_max, Tensor) else v_min_max, device=device
    ).float()
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"v_min_max_for_clip must be (>=2, {MOTION_DIM}), got {tuple(arr.shape)}")
    return arr[:2]


def clip_motion(rows: Tensor, v_min_max: Tensor | None) -> Tensor:
    """Clip (n,265) rows per dim to ``v_min_max[0] .. v_min_max[1]`` (rows 2,3 of the pkl unused)."""
    if v_min_max is None:
        return rows
    return torch.minimum(torch.maximum(rows, v_min_max[0]), v_min_max[1])


def smooth_motion(seq: Tensor, k: int, start: int, end: int, dims: int = SMOOTH_DIMS) -> Tensor:
    """Mean-filter rows ``start..end-1`` of ``seq`` (L,D) over columns ``:dims``.

    Window of row i: rows ``max(0, i-k//2) .. min(L, i+k//2+1)-1`` of the *unsmoothed* input
    (edge-truncated, divided by the number of rows actually present). ``k <= 1`` disables.
    Returns a new tensor; ``seq`` is not modified.
    """
    if k <= 1:
        return seq
    length = seq.shape[0]
    start, end = max(start, 0), min(end, length)
    if start >= end:
        return seq
    half = k // 2
    part = seq[:, :dims]
    pad = part.new_zeros(half, part.shape[1])
    padded = torch.cat([pad, part, pad], 0)
    acc = padded[start:end]
    for off in range(1, 2 * half + 1):
        acc = acc + padded[start + off : end + off]
    rows = torch.arange(start, end, device=seq.device)
    count = (rows + half + 1).clamp_max(length) - (rows - half).clamp_min(0)
    out = seq.clone()
    out[start:end, :dims] = acc / count.to(seq.dtype).unsqueeze(1)
    return out


class MotionWindowing:
    """State of the window recursion (upstream ``Audio2Motion`` after ``setup``)."""

    def __init__(
        self,
        sample_window: SampleWindow,
        source_motion: Tensor,
        *,
        seq_frames: int = 80,
        overlap: int = 10,
        online: bool = False,
        fix_kp_cond: int = 0,
        fix_kp_cond_dim: Sequence[int] | None = None,
        smo_k_d: int = 3,
    ) -> None:
        """Args:
        sample_window: LMDM DDIM sampler (kp_cond (1,265), cond (1,80,D)) -> (1,80,265).
        source_motion: (265,) motion vector of the conditioning identity's frame 0
            (``motion_to_vector(condition_source.x_s_info_0)``); initial kp_cond.
        seq_frames: LMDM window length (``audio2motion_cfg.seq_frames``, 80).
        overlap: ``overlap_v2`` (offline pkl style 10, online pkl 70).
        online: fuse length min(overlap, V) instead of overlap.
        fix_kp_cond: 0 never reset kp_cond; k > 0 reset to the source vector every k-th window.
        fix_kp_cond_dim: [ds, de] columns kept from generation on reset (online pkl [0, 202]).
        smo_k_d: mean-filter width over dims 0..201 (<= 1 disables).
        """
        if not 0 <= overlap < seq_frames:
            raise ValueError(f"overlap_v2 must be in [0, {seq_frames}), got {overlap}")
        self.sample_window = sample_window
        self.seq_frames = seq_frames
        self.overlap = overlap
        self.valid_len = seq_frames - overlap
        self.fuse_len = min(overlap, self.valid_len) if online else overlap
        self.fix_kp_cond = int(fix_kp_cond)
        self.fix_kp_cond_dim = None if fix_kp_cond_dim is None else (int(fix_kp_cond_dim[0]), int(fix_kp_cond_dim[1]))
        self.smo_k_d = int(smo_k_d)
        self.source_kp_cond = source_motion.reshape(1, MOTION_DIM).float()
        self.kp_cond = self.source_kp_cond
        self.window_index = 0
        device = self.source_kp_cond.device
        self._alpha = (
            torch.arange(self.fuse_len, dtype=torch.float32, device=device) / max(self.fuse_len, 1)
        ).unsqueeze(1)  # (F,1)

    def _fuse(self, res: Tensor, pred: Tensor) -> Tensor:
        f, v, s = self.fuse_len, self.valid_len, self.seq_frames
        length = res.shape[0]
        r1 = res[length - f :]
        r2 = pred[s - v - f : s - v]
        fused = r1 * (1 - self._alpha) + r2 * self._alpha
        return torch.cat([res[: length - f], fused, pred[s - v :]], 0)

    def restart(self, kp_cond: Tensor) -> None:
        """Start a new window sequence conditioned on ``kp_cond`` (265,): the motion to continue
        from, or :attr:`source_kp_cond` to start from the neutral face."""
        self.kp_cond = kp_cond.reshape(1, MOTION_DIM).float()
        self.window_index = 0

    def update_kp_cond(self, res: Tensor) -> None:
        """Condition the next window on ``res``'s frame just before it starts."""
        row = res[res.shape[0] - self.overlap - 1].unsqueeze(0)
        if self.fix_kp_cond > 0 and self.window_index % self.fix_kp_cond == 0:
            cond = self.source_kp_cond
            if self.fix_kp_cond_dim is not None:
                ds, de = self.fix_kp_cond_dim
                cond = torch.cat([cond[:, :ds], row[:, ds:de], cond[:, de:]], 1)
            self.kp_cond = cond
        else:
            self.kp_cond = row

    def step(self, cond: Tensor, res: Tensor | None) -> Tensor:
        """Sample one window and merge it into the running result.

        Args:
            cond: (1, seq_frames, D) condition rows of the window.
            res: (L,265) result so far, or None for the first window.

        Returns:
            New (L',265) result (L' = 80 for the first window, L + V after).
        """
        pred = self.sample_window(self.kp_cond, cond).reshape(self.seq_frames, MOTION_DIM).float()
        if res is None:
            res = smooth_motion(pred, self.smo_k_d, 0, pred.shape[0])
        else:
            res = self._fuse(res, pred)
            length = res.shape[0]
            res = smooth_motion(res, self.smo_k_d, length - self.valid_len - self.fuse_len, length - self.valid_len + 1)
        self.window_index += 1
        self.update_kp_cond(res)
        return res


def offline_window_starts(num_frames: int, valid_len: int) -> list[int]:
    """Offline window start frames: 0, V, 2V, ... while < num_frames."""
    return list(range(0, num_frames, valid_len))


def generate_motion_offline(
    aud_feat: Tensor,
    condition: ConditionHandler,
    windowing: MotionWindowing,
    *,
    v_min_max: Tensor | None = None,
) -> Tensor:
    """Whole-sequence motion (upstream ``_audio2motion_offline``).

    Windows start at 0, V, 2V, ...; the last one is padded by repeating its last condition row.
    The result is trimmed to N frames and smoothed once more over the whole sequence.

    Args:
        aud_feat: (N,1024) features of the whole clip (offline wav2feat, trimmed to num_f).
        condition: handler; rows use absolute indices 0..N-1.
        windowing: fresh :class:`MotionWindowing` (online=False).
        v_min_max: optional (2,265) clip bounds (``as_v_min_max``).

    Returns:
        (N,265) motion rows, clipped if ``v_min_max`` is given. Frame 0 is the relative-driving d0.
    """
    chunks = [chunk.motion for chunk in iter_motion_offline(aud_feat, condition, windowing, v_min_max=v_min_max)]
    if not chunks:
        return aud_feat.new_zeros(0, MOTION_DIM)
    return torch.cat(chunks, 0)


def iter_motion_offline(
    aud_feat: Tensor,
    condition: ConditionHandler,
    windowing: MotionWindowing,
    *,
    v_min_max: Tensor | None = None,
    first_frame: int = 0,
) -> Iterator[MotionChunk]:
    """:func:`generate_motion_offline`, yielding each row as soon as its final value is known.

    ``first_frame``: the session frame of ``aud_feat``'s first row (a later utterance of a
    conversation), for the condition rows and the chunks' frame numbers.

    A later window rewrites only the last F (= overlap) rows of the running result and
    re-smooths from there, and the final whole-sequence mean filter reads one row either
    side; so after a window that leaves L rows, rows ``< L - F - 1`` are final and are
    emitted then (the rest after the last window). Each emitted row is computed by the
    same operations on the same values as in the one-shot version: identical output, without
    the first frame waiting for every window of the clip.
    """
    num_frames = aud_feat.shape[0]
    if num_frames == 0:
        return
    cond_all = condition(aud_feat, first_frame)
    s = windowing.seq_frames
    starts = offline_window_starts(num_frames, windowing.valid_len)
    res: Tensor | None = None
    emitted = 0
    for k, start in enumerate(starts):
        window = cond_all[start : start + s]
        if window.shape[0] < s:
            window = torch.cat([window, window[-1:].expand(s - window.shape[0], -1)], 0)
        res = windowing.step(window.unsqueeze(0), res)
        length = res.shape[0]
        last = k == len(starts) - 1
        ready = num_frames if last else min(length - windowing.fuse_len - 1, num_frames)
        if ready <= emitted:
            continue
        seq = res[: min(length, num_frames)]
        rows = smooth_motion(seq, windowing.smo_k_d, emitted, ready)[emitted:ready]
        yield MotionChunk(start_frame=first_frame + emitted, motion=clip_motion(rows, v_min_max))
        emitted = ready


class OnlineAudio2Motion:
    """Incremental Audio2Motion for streaming (upstream online ``_audio2motion_worker``).

    Feature buffer = ``overlap`` prefix rows (HuBERT features of ``overlap*640`` zero samples)
    followed by the real features; condition index of buffer row 0 is ``-overlap``. A window runs
    as soon as 80 rows from the current position exist. Window 0 only primes the state (``d0`` :=
    its frame 0); every later window emits V frames. :meth:`finish` pads the final partial window
    with its last row and emits up to V + F more frames, which can run past the audio end (the
    server trims to ``ceil(samples/16000*25)``).

    With overlap 70 (V = 10) the first frame leaves after 20 real features (chunk #3 of 5-row
    chunks) and frame k needs features through ``10*(k//10) + 19``.

    Usage::

        a2m = OnlineAudio2Motion(windowing, condition, prefix_feats, v_min_max=vmm)
        for feats in hubert_chunks:           # (5,1024) each
            chunk = a2m.push(feats)
            if a2m.d0 is not None and stitcher.d0 is None:
                stitcher.set_d0(a2m.d0)         # relative driving reference (silence frame)
            ... chunk.motion rows -> vector_to_arrays -> MotionStitcher
        tail = a2m.finish()
    """

    def __init__(
        self,
        windowing: MotionWindowing,
        condition: ConditionHandler,
        prefix_features: Tensor,
        *,
        v_min_max: Tensor | None = None,
        keep_frames: int | None = None,
        first_frame: int = 0,
    ) -> None:
        """Args:
            windowing: fresh (or restarted) :class:`MotionWindowing` built with ``online=True``.
            condition: condition handler (emo / eye rows indexed from ``-overlap``).
            prefix_features: (overlap,1024) features of ``overlap*640`` zero samples.
            v_min_max: optional (2,265) clip bounds applied to emitted rows and d0.
            keep_frames: rows of result / feature history kept (default 2*seq_frames, as upstream).
            first_frame: session frame of the first feature row pushed (after an interrupt).

        Raises:
            ValueError: prefix length differs from the overlap.
        """
        if prefix_features.shape[0] != windowing.overlap:
            raise ValueError(f"prefix has {prefix_features.shape[0]} rows, overlap_v2 is {windowing.overlap}")
        self.windowing = windowing
        self.condition = condition
        self.v_min_max = v_min_max
        self.keep_frames = keep_frames if keep_frames is not None else 2 * windowing.seq_frames
        if self.keep_frames < windowing.seq_frames + windowing.valid_len:
            raise ValueError("keep_frames too small for the window recursion")
        self._feat = prefix_features.reshape(-1, AUDIO_FEAT_DIM).float()
        self._cond_index_start = -windowing.overlap
        self._local = 0  # buffer row of the next window start
        self._global = first_frame  # the next window starts at session frame _global - overlap
        self._res: Tensor | None = None
        self._valid_start: int | None = None  # row of _res holding frame _emitted
        self._emitted = first_frame  # the next frame to emit
        self._finished = False
        self.d0: MotionInfo | None = None  # frame 0 of window 0, clipped

    def push(self, features: Tensor) -> MotionChunk:
        """Append (k,1024) feature rows; run every window that became complete.

        Returns:
            The frames emitted by this call (possibly none).

        Raises:
            RuntimeError: called after :meth:`finish`.
        """
        if self._finished:
            raise RuntimeError("push() after finish()")
        features = features.reshape(-1, AUDIO_FEAT_DIM).float()
        self._feat = torch.cat([self._feat, features], 0)
        return self._run(is_end=False)

    def finish(self) -> MotionChunk:
        """Flush: run the remaining (padded) window(s) and emit the tail. Call once."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        return self._run(is_end=True)

    def flush(self, features: Tensor, end_frame: int) -> MotionChunk:
        """End of an utterance at session frame ``end_frame``: append the features of its last
        frames (rows past ``end_frame`` are dropped), emit every frame before ``end_frame`` with
        the look-ahead padded by the last row (silence: the tail features are those of the
        zero-padded audio), then go on at ``end_frame`` as if the audio fed next had followed.

        The next window cross-fades from the padded run's motion of frames ``end_frame ..
        end_frame + F - 1``, so the next utterance continues the current motion; frames then
        leave with the usual look-ahead.
        """
        if self._finished:
            raise RuntimeError("flush() after finish()")
        w = self.windowing
        s, v = w.seq_frames, w.valid_len
        first = self._emitted
        features = features.reshape(-1, AUDIO_FEAT_DIM).float()
        keep = max(0, end_frame - self._frame_of_row(self._feat.shape[0]))
        self._feat = torch.cat([self._feat, features[:keep]], 0)
        out = [self._run(is_end=False).motion]
        while self._emitted < end_frame:
            missing = self._local + s - self._feat.shape[0]
            if missing > 0:
                self._feat = torch.cat([self._feat, self._feat[-1:].expand(missing, -1)], 0)
            out.append(self._step(self._feat[self._local : self._local + s], v))
        if self._res is not None:
            self._continue_at(end_frame)
        motion = torch.cat(out, 0)[: max(0, end_frame - first)]
        return MotionChunk(start_frame=first, motion=motion)

    def _frame_of_row(self, row: int) -> int:
        """Session frame of feature buffer row ``row``."""
        return self._global - self.windowing.overlap + row - self._local

    def _continue_at(self, frame: int) -> None:
        """Rewind the recursion to the state it has between windows when ``frame`` is the next
        frame to emit: the result ends with the F provisional rows of frames ``frame ..
        frame + F - 1``, and the next window starts S - V - F frames before ``frame``."""
        assert self._res is not None and self._valid_start is not None
        w = self.windowing
        res_row = self._valid_start - (self._emitted - frame)
        self._res = self._res[: res_row + w.fuse_len]
        self._valid_start, self._emitted = res_row, frame
        start = frame - (w.seq_frames - w.valid_len - w.fuse_len)
        self._local += start - self._frame_of_row(self._local)
        self._global = start + w.overlap
        self._feat = self._feat[: self._local + frame - start]
        w.update_kp_cond(self._res)
        self._trim_features()

    def _run(self, is_end: bool) -> MotionChunk:
        s = self.windowing.seq_frames
        first = self._emitted
        out: list[Tensor] = []
        while True:
            available = self._feat.shape[0] - self._local
            if available <= 0 or (available < s and not is_end):
                break
            window = self._feat[self._local : self._local + s]
            real_valid = self.windowing.valid_len
            if window.shape[0] < s:
                real_valid = window.shape[0]
                window = torch.cat([window, window[-1:].expand(s - window.shape[0], -1)], 0)
            out.append(self._step(window, real_valid))
            if self._local >= self._feat.shape[0]:
                break
        self._trim_features()
        motion = torch.cat(out, 0) if out else self._feat.new_zeros(0, MOTION_DIM)
        return MotionChunk(start_frame=first, motion=motion)

    def _step(self, window: Tensor, real_valid: int) -> Tensor:
        """Run one window (80 feature rows); return the rows it emits (none for window 0)."""
        w = self.windowing
        cond = self.condition(window, self._global + self._cond_index_start).unsqueeze(0)
        self._res = w.step(cond, self._res)
        rows = self._res.new_zeros(0, MOTION_DIM)
        if self._valid_start is None:
            # window 0: prime only; d0 is its (silence) frame 0. It advances by V even when padded (audio
            # shorter than about V frames): upstream's worker then skips the real rows and emits nothing
            self._valid_start = self._res.shape[0] - w.fuse_len
            self.d0 = vector_to_motion(clip_motion(self._res[:1], self.v_min_max)[0])
            real_valid = w.valid_len
        else:
            rows = clip_motion(self._res[self._valid_start : self._valid_start + real_valid], self.v_min_max)
            self._emitted += rows.shape[0]
            self._valid_start += real_valid
        self._local += real_valid
        self._global += real_valid
        length = self._res.shape[0]
        if length > self.keep_frames:
            cut = length - self.keep_frames
            self._res = self._res[cut:]
            self._valid_start -= cut
        return rows

    def _trim_features(self) -> None:
        length = self._feat.shape[0]
        if length > self.keep_frames:
            cut = length - self.keep_frames
            self._feat = self._feat[cut:]
            self._local -= cut


EASE_FRAMES = 6
"""Frames over which motion eases from where an interrupted utterance left it (the last is the target)."""


class MotionEase:
    """Cross-fade from a held motion row into newly generated rows, with a cosine ease (no jump
    at either end): frame ``start_frame + k`` keeps ``(1 + cos(pi (k + 1) / frames)) / 2`` of
    ``origin``, so frame ``start_frame + frames - 1`` onwards is the new motion."""

    def __init__(self, origin: Tensor, start_frame: int, frames: int = EASE_FRAMES) -> None:
        self.origin = origin.reshape(1, MOTION_DIM)
        self.start_frame = start_frame
        self.frames = frames

    def __call__(self, chunk: MotionChunk) -> MotionChunk:
        if self.frames <= 0:
            return chunk
        k = torch.arange(chunk.start_frame, chunk.start_frame + len(chunk), dtype=torch.float32) - self.start_frame
        step = ((k + 1) / self.frames).clamp(0, 1)
        hold = (0.5 + 0.5 * torch.cos(torch.pi * step)).unsqueeze(1)
        return MotionChunk(start_frame=chunk.start_frame, motion=hold * self.origin + (1 - hold) * chunk.motion)
