"""Live audio: PCM chunk decoding and an incremental (stateful) resampler to 16 kHz.

A live session receives audio in chunks of any size. :func:`decode_pcm` turns one chunk's
bytes into float32 mono; :class:`StreamingResampler` converts the chunk stream to 16 kHz
keeping its filter state across chunks, so the output does not depend on how the audio
was cut: it equals :func:`ditto.media.audio.to_mono_16k` of the whole recording (libsoxr,
the resampler of upstream's ``librosa.load``) and has the same length. Resampling each chunk
on its own would instead restart the filter at every chunk boundary (clicks, wrong length).
"""

from __future__ import annotations

import numpy as np
import soxr

from ditto import SAMPLE_RATE_HZ
from ditto.errors import ErrorCode, MediaError
from ditto.media.audio import SOXR_QUALITY, resampled_length

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
            f"x {channels} channel(s) ({frame_bytes} bytes each)",
            code=ErrorCode.AUDIO_INVALID,
        )
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
    """Incremental ``rate_hz -> 16 kHz`` resampler: libsoxr's stream API at the quality file mode
    uses (:data:`~ditto.media.audio.SOXR_QUALITY`).

    libsoxr's output does not depend on how its input was cut, so a live session gets exactly
    the samples :func:`ditto.media.audio.to_mono_16k` gives the whole recording (hence the same
    HuBERT features), ``ceil(n * 16000 / rate)`` of them in total. The price is look-ahead:
    libsoxr holds back its HQ filter's delay plus a processing block, in 20 ms chunks at most
    37 ms at 24/48 kHz, 40 ms at 22.05/44.1 kHz, 58 ms at 32 kHz, 84 ms at 11.025 kHz and
    115 ms at 8 kHz; 16 kHz input passes straight through.

    Call :meth:`push` with chunks in order, then :meth:`flush` once (the tail).
    """

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = int(rate_hz)
        self.samples_in = 0
        self.samples_out = 0
        self._flushed = False
        self._stream = (
            None
            if self.rate_hz == SAMPLE_RATE_HZ
            else soxr.ResampleStream(self.rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality=SOXR_QUALITY)
        )

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append input samples (float32 mono at ``rate_hz``); return the new 16 kHz samples."""
        if self._flushed:
            raise RuntimeError("resampler was flushed")
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += len(samples)
        out = samples if self._stream is None else self._stream.resample_chunk(samples)
        self.samples_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """End of input: the remaining samples, up to ``ceil(samples_in * 16000 / rate_hz)`` in total
        (zero-padded or cut to it, as file mode does)."""
        if self._flushed or self._stream is None:
            self._flushed = True
            return np.zeros(0, np.float32)
        self._flushed = True
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        missing = max(resampled_length(self.samples_in, self.rate_hz) - self.samples_out, 0)
        tail = np.pad(tail[:missing], (0, max(missing - len(tail), 0)))
        self.samples_out += len(tail)
        return tail.astype(np.float32, copy=False)
