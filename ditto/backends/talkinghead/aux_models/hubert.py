"""Streaming HuBERT audio features (Ditto ``hubert`` / ``hubert_streaming_fix_kv``).

The model maps ``input_values`` (1, L) float32 16 kHz audio to
``encoding_out`` (T, 1024), one row per 20 ms (T = ⌊(L − 400) / 320⌋ + 1). Ditto
never feeds whole utterances: it feeds fixed windows and averages rows in pairs
to get one 1024-d feature per 40 ms video frame (25 fps). Window math (docs/pipeline.md
§8; chunksize = (past, current, future) frames = (3, 5, 2)):

* window length ``split_len = 640 · (3 + 5 + 2) + 80 = 6480`` samples → 20 rows;
* rows ``[−(5 + 2)·2 : −2·2]`` = 6..15 are the 5 current frames, averaged in
  pairs → (5, 1024);
* consecutive windows start 5 frames (3200 samples) apart.

Offline: zero-pad 2000 samples in front (6480 − 7·640) and 6480 at the end,
windows at frame 0, 5, 10, … < num_f, concatenate, trim to num_f =
⌈samples / 640⌉. Online (streaming): zero-pad 1920 samples (3 frames) in
front, windows every 3200 samples for every start inside the padded audio,
zero-padded at the tail; online window i is offline window i shifted 80
samples later. Upstream computes num_f and window starts in floating point
(``ceil(n / 16000 · 25)``, ``int(i · 0.04 · 16000)``), which is off by one for a
few lengths (e.g. 4480 samples → 8); these helpers use exact integer math.
"""

from __future__ import annotations

import contextlib
from typing import cast

import numpy as np
import torch

from ditto import SAMPLES_PER_FRAME, frames_for_samples
from ditto.backends.talkinghead.aux_models._io import Runner, first_declared_name, run_numpy

FEATURE_DIM = 1024
DEFAULT_CHUNKSIZE = (3, 5, 2)
WINDOW_TAIL_SAMPLES = 80


def split_len(chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE) -> int:
    """Samples per HuBERT window: 640 · sum(chunksize) + 80 (6480 by default)."""
    return SAMPLES_PER_FRAME * sum(chunksize) + WINDOW_TAIL_SAMPLES


def hop_len(chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE) -> int:
    """Samples between window starts: 640 · current frames (3200 by default)."""
    return SAMPLES_PER_FRAME * chunksize[1]


def valid_row_slice(chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE) -> slice:
    """Rows of one window's encoding that belong to the current frames (6..15 of 20)."""
    return slice(-(chunksize[1] + chunksize[2]) * 2, -chunksize[2] * 2)


def window_features(encoding: np.ndarray, chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE) -> np.ndarray:
    """(T, 1024) encoding of one window → (chunksize[1], 1024) per-frame features."""
    rows = encoding[valid_row_slice(chunksize)]
    if rows.shape[0] != 2 * chunksize[1]:
        raise ValueError(f"encoding with {encoding.shape[0]} rows is too short for chunksize {chunksize}")
    return rows.reshape(chunksize[1], 2, -1).mean(axis=1)


def offline_windows(audio: np.ndarray, chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE) -> list[np.ndarray]:
    """Windows the offline path feeds to HuBERT for a whole utterance (16 kHz mono)."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    length = split_len(chunksize)
    front = length - SAMPLES_PER_FRAME * (chunksize[1] + chunksize[2])
    padded = np.concatenate([np.zeros(front, np.float32), audio, np.zeros(length, np.float32)])
    n_frames = frames_for_samples(audio.shape[0])
    starts = range(0, n_frames, chunksize[1])
    return [padded[f * SAMPLES_PER_FRAME : f * SAMPLES_PER_FRAME + length] for f in starts]


def online_windows(audio: np.ndarray, chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE) -> list[np.ndarray]:
    """Windows the streaming path feeds to HuBERT (upstream inference.py online loop)."""
    windower = StreamingWindower(chunksize)
    return windower.push(audio) + windower.flush()


class StreamingWindower:
    """Cuts a live 16 kHz stream into the online HuBERT windows.

    ``push`` returns every window whose samples have all arrived; ``flush`` (at
    end of stream) returns the remaining ones, zero-padded, so that the windows
    equal :func:`online_windows` of the whole stream whatever the push sizes.
    Window i yields features for frames 5i..5i+4 and needs input up to sample
    3200·i + 4560.
    """

    def __init__(self, chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE) -> None:
        self.chunksize = chunksize
        self.window = split_len(chunksize)
        self.hop = hop_len(chunksize)
        self._buffer = np.zeros(SAMPLES_PER_FRAME * chunksize[0], np.float32)  # front padding
        self._offset = 0  # padded-stream index of _buffer[0]
        self._next_start = 0  # padded-stream index of the next window
        self._flushed = False

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        if self._flushed:
            raise RuntimeError("push after flush")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buffer = np.concatenate([self._buffer, samples])
        out = []
        while self._next_start + self.window <= self._offset + self._buffer.shape[0]:
            out.append(self._take(self._next_start))
            self._next_start += self.hop
        self._trim()
        return out

    def flush(self) -> list[np.ndarray]:
        """Remaining windows (every start inside the stream), zero-padded at the tail."""
        if self._flushed:
            return []
        self._flushed = True
        return self._remaining()

    def end_utterance(self) -> list[np.ndarray]:
        """End of an utterance: pad it with silence to the next frame boundary and return its
        remaining windows (zero-padded at the tail, as :meth:`flush`). Audio pushed next starts
        a new window grid at that boundary, its last ``past`` frames as the first window's past."""
        past = SAMPLES_PER_FRAME * self.chunksize[0]
        pushed = self._offset + self._buffer.shape[0] - past
        out = self.push(np.zeros(-pushed % SAMPLES_PER_FRAME, np.float32))
        out += self._remaining()
        self._buffer = self._buffer[self._buffer.shape[0] - past :].copy()
        self._offset = self._next_start = 0
        return out

    def _remaining(self) -> list[np.ndarray]:
        end = self._offset + self._buffer.shape[0]
        out = []
        while self._next_start < end:
            out.append(self._take(self._next_start))
            self._next_start += self.hop
        return out

    def _take(self, start: int) -> np.ndarray:
        local = start - self._offset
        chunk = self._buffer[local : local + self.window]
        if chunk.shape[0] < self.window:
            chunk = np.pad(chunk, (0, self.window - chunk.shape[0]))
        return chunk.copy()

    def _trim(self) -> None:
        drop = self._next_start - self._offset
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._offset += drop


class HubertFeatureExtractor:
    """HuBERT (an ONNX/TensorRT runner or a torch module) + Ditto's window math.

    Args:
        runner: ``runner(input_values=(1, L) float32) -> {"encoding_out": (T, 1024)}``
            (the first declared input/output are used when names differ). Called once per
            window, batch rows one after the other.
        chunksize: (past, current, future) frames, upstream default (3, 5, 2).
        module: instead of ``runner``: a torch module ``(B, L) -> (B, T, 1024)`` (e.g.
            :class:`~ditto.backends.talkinghead.models.hubert.HubertLarge`, see
            :func:`~ditto.backends.talkinghead.aux_models.hubert_torch.load_hubert_extractor`),
            run in eval mode on the device of its parameters, whole batches at once.
        autocast_fp16: module only, CUDA only: run under fp16 autocast (outputs float32).
        max_batch: module only: windows per forward call in :meth:`offline_features`.

    Every method goes through :meth:`encode_batch`. Safe to call from several threads.
    """

    def __init__(
        self,
        runner: Runner | None = None,
        chunksize: tuple[int, int, int] = DEFAULT_CHUNKSIZE,
        *,
        module: torch.nn.Module | None = None,
        autocast_fp16: bool = False,
        max_batch: int = 32,
    ) -> None:
        if (runner is None) == (module is None):
            raise ValueError("HubertFeatureExtractor takes a runner or a module (exactly one)")
        self._runner = runner
        self._module = module.eval() if module is not None else None
        self.chunksize = cast(tuple[int, int, int], tuple(chunksize))
        self.max_batch = max(1, int(max_batch))
        if module is not None:
            self.device = next(module.parameters()).device
            self.autocast_fp16 = bool(autocast_fp16) and self.device.type == "cuda"
        else:
            self.device = getattr(runner, "device", torch.device("cpu"))
            self.autocast_fp16 = False
        self._input_name = first_declared_name(runner, "input_names", "input_values")
        self._output_name = first_declared_name(runner, "output_names", "encoding_out")

    @property
    def module(self) -> torch.nn.Module | None:
        """The torch module when HuBERT runs as one, else None (a runner)."""
        return self._module

    def __repr__(self) -> str:
        engine = type(self._module).__name__ if self._module is not None else repr(self._runner)
        return f"HubertFeatureExtractor({engine}, device={self.device}, fp16={self.autocast_fp16})"

    def encode_batch(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        """Raw model call: (B, L) windows of equal length → (B, T, 1024) float32 host array.

        The torch module runs the whole batch in one call (on its device); a runner is called
        once per row. Row b of the result equals ``encode(windows[b])``.
        """
        if isinstance(windows, torch.Tensor):
            batch = windows.detach().to(torch.float32)
        else:
            batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if batch.ndim != 2:
            raise ValueError(f"encode_batch takes (B, L) windows, got shape {tuple(batch.shape)}")
        if self._module is not None:
            return self._encode_module(batch)
        rows = [self._encode_runner(batch[b : b + 1]) for b in range(batch.shape[0])]
        if not rows:
            return np.zeros((0, 0, FEATURE_DIM), np.float32)
        return np.stack(rows)

    def _encode_module(self, batch: torch.Tensor) -> np.ndarray:
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.float16) if self.autocast_fp16 else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self._module(batch.to(self.device, non_blocking=True))  # type: ignore[misc]
        return out.float().cpu().numpy()

    def _encode_runner(self, row: torch.Tensor) -> np.ndarray:
        out = run_numpy(self._runner, {self._input_name: row.numpy()})  # type: ignore[arg-type]
        enc = out.get(self._output_name, next(iter(out.values())))
        if enc.ndim == 3 and enc.shape[0] == 1:
            enc = enc[0]
        return enc.astype(np.float32)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Raw model call: (L,) samples → (T, 1024) float32."""
        return self.encode_batch(np.asarray(samples, dtype=np.float32).reshape(1, -1))[0]

    def chunk_features_batch(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, 6480) windows → (B, 5, 1024) features, one batched model call on the torch path."""
        enc = self.encode_batch(windows)
        if len(enc) == 0:
            return np.zeros((0, self.chunksize[1], FEATURE_DIM), np.float32)
        return np.stack([window_features(e, self.chunksize) for e in enc])

    def chunk_features(self, window: np.ndarray) -> np.ndarray:
        """One 6480-sample window → (5, 1024) features (upstream ``run_chunk`` / ``Wav2FeatHubert.__call__``)."""
        return window_features(self.encode(window), self.chunksize)

    def offline_features(self, audio: np.ndarray) -> np.ndarray:
        """(num_f, 1024) features for a whole 16 kHz utterance (offline path; batches of ``max_batch`` windows)."""
        n_frames = frames_for_samples(np.asarray(audio).reshape(-1).shape[0])
        if n_frames == 0:
            return np.zeros((0, FEATURE_DIM), np.float32)
        windows = np.stack(offline_windows(audio, self.chunksize))
        step = self.max_batch if self._module is not None else len(windows)
        feats = [self.chunk_features_batch(windows[i : i + step]) for i in range(0, len(windows), step)]
        feats_all = np.concatenate(feats, axis=0)  # (windows, 5, dim)
        return feats_all.reshape(-1, feats_all.shape[-1])[:n_frames]
