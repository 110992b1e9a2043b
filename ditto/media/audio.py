"""Audio decoding: any container (wav, flac, ogg, mp3, ...) to float32 16 kHz mono.

Decoding tries libsndfile (soundfile) first and PyAV (FFmpeg) second, so every
format either library knows is accepted. Resampling is what upstream's ``inference.py`` gets
from ``librosa.load(path, sr=16000)`` (librosa 0.10.2: ``res_type="soxr_hq"``, length fixed to
``ceil(n * 16000 / sr)``): libsoxr at HQ quality, zero-padded or cut to that length, so a file
gives upstream's HuBERT features. That length also makes ``ceil(len / 640)`` equal
``ceil(duration * 25)``: the frame count never depends on the input rate.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import soxr

from ditto import SAMPLE_RATE_HZ, frames_for_samples
from ditto.errors import ErrorCode, MediaError

SILENCE_PEAK = 1e-3
"""Peak amplitude (full scale 1.0) under which a whole recording counts as silent (-60 dBFS)."""


SOXR_QUALITY = "HQ"
"""libsoxr quality of librosa's default ``res_type="soxr_hq"``."""


def resampled_length(n: int, sample_rate_hz: int) -> int:
    """16 kHz samples for ``n`` input samples: ``ceil(n * 16000 / rate)`` (librosa's ``fix_length``;
    its float ratio gives the same count at the usual rates)."""
    return -(-n * SAMPLE_RATE_HZ // sample_rate_hz)


@dataclasses.dataclass(frozen=True, slots=True)
class Audio:
    samples: np.ndarray  # (n,) float32, 16 kHz mono, in [-1, 1]
    source_sample_rate_hz: int
    source_channels: int
    duration_s: float  # of the original recording

    @property
    def total_frames(self) -> int:
        """Video frames this audio drives: ceil(duration * 25)."""
        return frames_for_samples(len(self.samples))


def _decode_soundfile(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, int(rate)


def _decode_pyav(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else None, rate=rate)
        planes = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                planes.append(out.to_ndarray())
        for out in resampler.resample(None):
            planes.append(out.to_ndarray())
    if not planes:
        return np.zeros((0, 1), np.float32), int(rate)
    return np.concatenate(planes, axis=1).T.astype(np.float32), int(rate)


def to_mono_16k(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mix (n, channels) or (n,) float audio down to mono and resample it to 16 kHz."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = np.asarray(mono, dtype=np.float32)
    if sample_rate_hz == SAMPLE_RATE_HZ:
        return mono
    target_len = resampled_length(len(mono), sample_rate_hz)
    out = soxr.resample(mono, sample_rate_hz, SAMPLE_RATE_HZ, quality=SOXR_QUALITY)
    if len(out) < target_len:
        out = np.pad(out, (0, target_len - len(out)))
    return out[:target_len]


def decode_audio(data: bytes, *, max_seconds: float, name: str = "audio") -> Audio:
    """Decode a whole audio file held in memory.

    Raises:
        MediaError: ``audio_empty`` (no bytes or no samples), ``audio_invalid`` (no decoder
            understands it), ``audio_too_long``, ``audio_silent`` (nothing above -60 dBFS).
    """
    if not data:
        raise MediaError(f"{name} is empty (0 bytes)", code=ErrorCode.AUDIO_EMPTY)
    samples: np.ndarray | None = None
    rate = 0
    errors = []
    for decode in (_decode_soundfile, _decode_pyav):
        try:
            samples, rate = decode(data)
            break
        except Exception as exc:  # each decoder raises its own types; both are tried
            errors.append(f"{decode.__name__.removeprefix('_decode_')}: {exc}")
    if samples is None:
        raise MediaError(f"{name} is not a readable audio file ({'; '.join(errors)})", code=ErrorCode.AUDIO_INVALID)
    if len(samples) == 0 or rate <= 0:
        raise MediaError(f"{name} contains no audio samples", code=ErrorCode.AUDIO_EMPTY)
    duration_s = len(samples) / rate
    if duration_s > max_seconds:
        raise MediaError(
            f"{name} lasts {duration_s:.1f} s, more than the server's limit of {max_seconds:.0f} s",
            code=ErrorCode.AUDIO_TOO_LONG,
        )
    if not np.all(np.isfinite(samples)):
        raise MediaError(f"{name} contains NaN or infinite samples", code=ErrorCode.AUDIO_INVALID)
    mono = to_mono_16k(samples, rate)
    if float(np.max(np.abs(mono), initial=0.0)) < SILENCE_PEAK:
        raise MediaError(
            f"{name} is silent (peak below -60 dBFS): there is no speech to animate", code=ErrorCode.AUDIO_SILENT
        )
    return Audio(np.clip(mono, -1.0, 1.0), rate, samples.shape[1], duration_s)
