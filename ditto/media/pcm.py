"""Live audio: PCM chunk decoding and an incremental (stateful) resampler to 16 kHz.

A live session receives audio in chunks of any size. :func:`decode_pcm` turns one chunk's
bytes into float32 mono; :class:`StreamingResampler` converts the chunk stream to 16 kHz
keeping its filter state across chunks, so the output does not depend on how the audio
was cut: it equals ``scipy.signal.resample_poly`` of the whole recording (same Kaiser FIR,
same delay compensation) and has ``ceil(n * 16000 / rate)`` samples in total, the length
:func:`ditto.media.audio.to_mono_16k` gives a file. Calling ``resample_poly`` per chunk
would instead restart the filter at every chunk boundary (clicks, wrong length).
"""

from __future__ import annotations

import math

import numpy as np

from ditto import SAMPLE_RATE_HZ
from ditto.errors import ErrorCode, MediaError

_INT16_SCALE = 1.0 / 32768.0


def decode_pcm(data: bytes | memoryview, *, sample_type: str, channels: int) -> np.ndarray:
    """Little-endian interleaved PCM bytes -> float32 mono samples (channels averaged).

    Raises:
        MediaError: ``audio_invalid`` when the byte count is not a whole number of
            sample frames, or a float32 sample is NaN or infinite.
    """
    width = 2 if sample_type == "int16" else 4
    frame_bytes = width * channels
    if len(data) % frame_bytes:
        raise MediaError(
            f"audio chunk of {len(data)} bytes is not a whole number of {sample_type} samples "
            f"x {channels} channel(s) ({frame_bytes} bytes each)", code=ErrorCode.AUDIO_INVALID)
    if sample_type == "int16":
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) * _INT16_SCALE
    else:
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(samples)):
            raise MediaError("audio chunk contains NaN or infinite float32 samples", code=ErrorCode.AUDIO_INVALID)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples


def encode_pcm16(samples: np.ndarray) -> bytes:
    """float32 [-1, 1] -> little-endian int16 bytes (clipped)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class StreamingResampler:
    """Rational-factor polyphase FIR resampler ``rate_hz -> 16 kHz`` that keeps its state.

    Output sample ``k`` is ``sum_j h[j] * up(x)[k * down + delay - j]`` where ``up(x)`` is the
    input with ``up - 1`` zeros between samples and ``h`` is scipy's ``resample_poly`` filter
    (``firwin(2 * 10 * max(up, down) + 1, 1 / max(up, down), window=("kaiser", 5.0)) * up``).
    An output is produced as soon as every input sample it needs has arrived: the resampler
    holds back ``10 * max(up, down) / up`` input samples, under 1.5 ms at 8-48 kHz.

    Call :meth:`push` with chunks in order, then :meth:`flush` once (zeros after the end).
    """

    def __init__(self, rate_hz: int, target_hz: int = SAMPLE_RATE_HZ) -> None:
        g = math.gcd(int(rate_hz), int(target_hz))
        self.up, self.down = target_hz // g, rate_hz // g
        self.rate_hz, self.target_hz = rate_hz, target_hz
        self.samples_in = 0
        self.samples_out = 0
        self._flushed = False
        if self.up == self.down:
            return
        from scipy.signal import firwin

        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        self._delay = half_len
        taps = -(-len(h) // self.up)
        padded = np.zeros(taps * self.up)
        padded[: len(h)] = h
        # phase p, tap m -> h[p + m * up]; output k uses phase (k*down + delay) % up
        self._poly = padded.reshape(taps, self.up).T.astype(np.float64)  # (up, taps)
        self._taps = taps
        self._buf = np.zeros(0, np.float64)  # input samples [buf_start, samples_in)
        self._buf_start = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append input samples (float32 mono at ``rate_hz``); return the new 16 kHz samples."""
        if self._flushed:
            raise RuntimeError("resampler was flushed")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += len(samples)
        if self.up == self.down:
            self.samples_out += len(samples)
            return samples
        self._buf = np.concatenate([self._buf, samples.astype(np.float64)])
        # output k needs input up to floor((k*down + delay) / up)
        k_end = (self.samples_in * self.up - self._delay - 1) // self.down + 1 if self.samples_in else 0
        return self._emit(max(k_end, self.samples_out))

    def flush(self) -> np.ndarray:
        """End of input: the remaining samples, up to ``ceil(samples_in * 16000 / rate_hz)`` in total."""
        if self._flushed:
            return np.zeros(0, np.float32)
        self._flushed = True
        total = -(-self.samples_in * self.up // self.down)
        if self.up == self.down:
            return np.zeros(0, np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self._taps + 1, np.float64)])  # zeros after the end
        return self._emit(total)

    def _emit(self, k_end: int) -> np.ndarray:
        k = np.arange(self.samples_out, k_end, dtype=np.int64)
        if not len(k):
            return np.zeros(0, np.float32)
        t = k * self.down + self._delay
        hi, phase = t // self.up, t % self.up
        idx = hi[:, None] - np.arange(self._taps)[None, :] - self._buf_start  # (n, taps)
        valid = idx >= 0  # before the buffer start: zeros before t = 0
        gathered = np.where(valid, self._buf[np.clip(idx, 0, None)], 0.0)
        out = np.einsum("nt,nt->n", gathered, self._poly[phase])
        self.samples_out = k_end
        # keep only the input the next outputs can still need
        next_t = self.samples_out * self.down + self._delay
        keep_from = max(next_t // self.up - self._taps + 1, 0)
        drop = min(keep_from - self._buf_start, len(self._buf))
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return out.astype(np.float32)
