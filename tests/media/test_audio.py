import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from ditto.errors import ErrorCode, MediaError
from ditto.media.audio import decode_audio

EXAMPLE_AUDIO = Path(__file__).resolve().parents[2] / "example" / "audio.wav"


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    mono = 0.5 * np.sin(2 * np.pi * 220 * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_and_channel_count(rate, channels):
    audio = decode_audio(encode(tone(15.75, rate, channels), rate, "WAV"), max_seconds=60)
    assert audio.total_frames == 394 and audio.source_sample_rate_hz == rate
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    # the 220 Hz tone survives resampling
    spectrum = np.abs(np.fft.rfft(audio.samples[:16000]))
    assert abs(np.argmax(spectrum) - 220) <= 1


@pytest.mark.parametrize("fmt,subtype", [("FLAC", None), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_compressed_formats(fmt, subtype):
    audio = decode_audio(encode(tone(2.0, 44100), 44100, fmt, subtype), max_seconds=60)
    assert abs(audio.duration_s - 2.0) < 0.1 and audio.total_frames in range(49, 54)


def test_example_audio_is_resampled_as_upstream_librosa_load():
    """librosa.load(path, sr=16000) = soundfile float32, channel mean, soxr HQ, length ceil(n * 16000 / sr)."""
    data = EXAMPLE_AUDIO.read_bytes()
    raw, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert rate == 24000  # the resampled case
    expected = soxr.resample(raw.mean(axis=1).astype(np.float32), rate, 16000, quality="HQ")
    assert len(expected) == -(-len(raw) * 16000 // rate)
    audio = decode_audio(data, max_seconds=60)
    np.testing.assert_array_equal(audio.samples, np.clip(expected, -1.0, 1.0))
    assert audio.total_frames == -(-len(raw) * 25 // rate)


def test_frame_count_is_ceil_of_duration():
    for n in (1, 639, 640, 641, 16000):
        audio = decode_audio(encode(tone(n / 16000, 16000) + 0.1, 16000, "WAV"), max_seconds=60)
        assert audio.total_frames == -(-n // 640)


@pytest.mark.parametrize(
    "data,code",
    [
        (b"", ErrorCode.AUDIO_EMPTY),
        (b"this is not audio at all" * 20, ErrorCode.AUDIO_INVALID),
    ],
)
def test_bad_bytes(data, code):
    with pytest.raises(MediaError) as info:
        decode_audio(data, max_seconds=60)
    assert info.value.code == code


def test_silent_and_too_long():
    with pytest.raises(MediaError) as info:
        decode_audio(encode(np.zeros(16000), 16000, "WAV"), max_seconds=60)
    assert info.value.code == ErrorCode.AUDIO_SILENT
    with pytest.raises(MediaError) as info:
        decode_audio(encode(tone(3.0, 16000), 16000, "WAV"), max_seconds=2)
    assert info.value.code == ErrorCode.AUDIO_TOO_LONG
