"""Speech -> mouth parameters at 25 fps, incrementally (pure numpy, no state shared between streams).

Two stages, each fed in order and each independent of how the audio was chunked:

* :class:`SpeechAnalyzer` cuts the 16 kHz stream into 640-sample frames and measures, per
  frame, the RMS level and the spectral shape of a 64 ms Hann window ending with the frame.
* :class:`MouthDriver` turns features into :class:`MouthParams`: an adaptive noise gate
  (silence -> closed mouth), jaw opening from loudness, lip spread/rounding from the
  spectral centroid, fricatives (energy above 3 kHz) open the jaw only a little; then
  asymmetric attack/release smoothing with :data:`LOOKAHEAD_FRAMES` of look-ahead, so the
  mouth starts moving slightly before the sound (coarticulation). The look-ahead is the
  latency a live stream pays.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from ditto import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

LOOKAHEAD_FRAMES = 1
"""Frames of audio after frame i that must have arrived before frame i is rendered (40 ms each)."""

SETTLE_FRAMES = 6
"""After an interrupt the mouth eases from where it was to the new targets over this many frames
(the last of them is the target)."""

WINDOW_SAMPLES = 1024
"""Spectral window (64 ms) ending at the frame's last sample; the first frames see zeros before t=0."""

SILENCE_DB = -55.0
"""Absolute gate (dBFS): quieter frames are silence whatever the running level."""


@dataclasses.dataclass(frozen=True, slots=True)
class SpeechFeatures:
    index: int  # frame number
    level_db: float  # RMS of the frame's 640 samples, dBFS
    centroid_hz: float  # spectral centroid over 100-8000 Hz of the 64 ms window
    high_share: float  # fraction of 100-8000 Hz energy above 3 kHz (fricatives, 0-1)


@dataclasses.dataclass(frozen=True, slots=True)
class MouthParams:
    index: int  # frame number
    jaw_open: float  # 0 closed .. 1 widest
    lip_spread: float  # -1 rounded ("oo") .. +1 spread ("ee")
    activity: float  # slowly smoothed loudness 0-1 (drives a little head motion)


class SpeechAnalyzer:
    """Incremental per-frame features. Call :meth:`push` with any chunk sizes, then :meth:`flush` once."""

    def __init__(self, first_index: int = 0) -> None:
        self._history = np.zeros(WINDOW_SAMPLES - SAMPLES_PER_FRAME, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._next_index = first_index
        freqs = np.fft.rfftfreq(WINDOW_SAMPLES, 1.0 / SAMPLE_RATE_HZ)
        self._band = (freqs >= 100.0) & (freqs <= 8000.0)
        self._band_freqs = freqs[self._band]
        self._high = self._band_freqs >= 3000.0
        self._hann = np.hanning(WINDOW_SAMPLES).astype(np.float32)

    @property
    def frames_emitted(self) -> int:
        return self._next_index

    def push(self, samples: np.ndarray) -> list[SpeechFeatures]:
        """Append float32 16 kHz mono samples; return features of every newly completed frame."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(self._pending):
            samples = np.concatenate([self._pending, samples])
        n_frames = len(samples) // SAMPLES_PER_FRAME
        out = [self._analyse(samples[i * SAMPLES_PER_FRAME : (i + 1) * SAMPLES_PER_FRAME]) for i in range(n_frames)]
        self._pending = samples[n_frames * SAMPLES_PER_FRAME :].copy()
        return out

    def flush(self) -> list[SpeechFeatures]:
        """Zero-pad a trailing partial frame (if any) and return its features."""
        if not len(self._pending):
            return []
        frame = np.zeros(SAMPLES_PER_FRAME, np.float32)
        frame[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, np.float32)
        return [self._analyse(frame)]

    def _analyse(self, frame: np.ndarray) -> SpeechFeatures:
        window = np.concatenate([self._history, frame])
        self._history = window[SAMPLES_PER_FRAME:]
        level_db = 10.0 * np.log10(float(np.mean(frame.astype(np.float64) ** 2)) + 1e-12)
        power = np.abs(np.fft.rfft(window * self._hann)) ** 2
        band = power[self._band]
        total = float(band.sum()) + 1e-20
        centroid = float((band * self._band_freqs).sum()) / total
        high_share = float(band[self._high].sum()) / total
        index = self._next_index
        self._next_index += 1
        return SpeechFeatures(index, level_db, centroid, high_share)


@dataclasses.dataclass(frozen=True, slots=True)
class MouthTuning:
    """How features map to the mouth; the defaults were set by watching rendered frames."""

    gate_range_db: float = 26.0  # below (running peak - this) a frame is silence
    full_open_below_peak_db: float = 1.0  # this close to the running peak the jaw is fully open
    peak_decay_db_per_frame: float = 0.04  # the running peak forgets loud passages at ~1 dB/s
    initial_peak_db: float = -18.0
    open_exponent: float = 1.5  # >1 keeps quiet consonants small
    attack: float = 0.7  # fraction of the gap to the target closed per frame when opening
    release: float = 0.55  # ... when closing
    spread_center_hz: float = 1600.0  # initial spectral centroid of a neutral vowel
    spread_range_hz: float = 700.0
    centroid_adapt: float = 0.05  # per loud frame, how fast the neutral centroid follows the speaker
    activity_smoothing: float = 0.08


class MouthDriver:
    """Features -> smoothed mouth parameters with a fixed look-ahead. Feed features in frame order."""

    def __init__(self, tuning: MouthTuning | None = None, lookahead_frames: int = LOOKAHEAD_FRAMES) -> None:
        self.tuning = tuning or MouthTuning()
        self.lookahead_frames = lookahead_frames
        self._peak_db = self.tuning.initial_peak_db
        self._centroid_hz = self.tuning.spread_center_hz
        self._targets: collections.deque[tuple[int, float, float]] = collections.deque()
        self._jaw = 0.0
        self._spread = 0.0
        self._activity = 0.0
        self._settle_from: MouthParams | None = None  # the mouth as it was at an interrupt
        self._settle_step = 0

    def push(self, features: list[SpeechFeatures]) -> list[MouthParams]:
        """Add features of the next frames; return params of every frame whose look-ahead is now complete."""
        out = []
        for feat in features:
            self._targets.append((feat.index, *self._raw_target(feat)))
            if len(self._targets) > self.lookahead_frames:
                out.append(self._emit())
        return out

    def flush(self) -> list[MouthParams]:
        """End of audio: emit the frames still waiting for look-ahead (silence assumed after the end)."""
        out = []
        while self._targets:
            out.append(self._emit())
        return out

    def interrupt(self, shown: MouthParams | None) -> None:
        """Drop the frames waiting for look-ahead; the next frames start from ``shown`` (the last
        frame rendered) and ease to whatever the audio fed next asks for (silence: rest)."""
        self._targets.clear()
        self._jaw = self._spread = 0.0
        self._settle_from, self._settle_step = shown, 0
        if shown is not None:
            self._activity = shown.activity

    def _raw_target(self, feat: SpeechFeatures) -> tuple[float, float]:
        tn = self.tuning
        self._peak_db = max(feat.level_db, self._peak_db - tn.peak_decay_db_per_frame)
        floor_db = max(SILENCE_DB, self._peak_db - tn.gate_range_db)
        full_db = self._peak_db - tn.full_open_below_peak_db
        loud = np.clip((feat.level_db - floor_db) / max(full_db - floor_db, 1e-3), 0.0, 1.0)
        if loud <= 0.0:
            return 0.0, 0.0
        loud = float(loud) ** tn.open_exponent
        # Spread is relative to this speaker's running mean centroid (voices differ by an octave).
        self._centroid_hz += tn.centroid_adapt * loud * (feat.centroid_hz - self._centroid_hz)
        spread = float(np.clip((feat.centroid_hz - self._centroid_hz) / tn.spread_range_hz, -1.0, 1.0))
        fricative = float(np.clip((feat.high_share - 0.35) / 0.3, 0.0, 1.0))
        spread = spread * (1.0 - fricative) + 0.4 * fricative
        jaw = loud * (1.0 - 0.3 * max(spread, 0.0)) * (1.0 - 0.6 * fricative)
        return jaw, spread * min(1.0, 2.0 * loud)

    def _emit(self) -> MouthParams:
        tn = self.tuning
        index, jaw_t, spread_t = self._targets.popleft()
        # Coarticulation: the mouth prepares for the next frames' sound.
        for k, (_, next_jaw, next_spread) in enumerate(list(self._targets)[: self.lookahead_frames]):
            weight = 0.6 / (k + 1)
            jaw_t = max(jaw_t, weight * next_jaw)
            if abs(next_spread) * weight > abs(spread_t):
                spread_t = weight * next_spread
        self._jaw += (tn.attack if jaw_t > self._jaw else tn.release) * (jaw_t - self._jaw)
        if self._jaw < 0.01 and jaw_t == 0.0:  # sub-pixel: call it closed
            self._jaw = 0.0
        self._spread += 0.5 * (spread_t - self._spread)
        if abs(self._spread) < 1e-3 and spread_t == 0.0:
            self._spread = 0.0
        self._activity += tn.activity_smoothing * (jaw_t - self._activity)
        jaw, spread = self._jaw, self._spread
        if self._settle_from is not None:
            # Cosine ease (no jump at either end) from the interrupted mouth to the driven one.
            self._settle_step += 1
            hold = 0.5 + 0.5 * np.cos(np.pi * self._settle_step / SETTLE_FRAMES)
            jaw = hold * self._settle_from.jaw_open + (1.0 - hold) * jaw
            spread = hold * self._settle_from.lip_spread + (1.0 - hold) * spread
            if self._settle_step == SETTLE_FRAMES:
                self._settle_from = None
        return MouthParams(index, float(jaw), float(spread), float(self._activity))
