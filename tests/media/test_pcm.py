import io
import math

import numpy as np
import pytest
import soundfile

from ditto.errors import ErrorCode, MediaError
from ditto.media.audio import to_mono_16k
from ditto.media.pcm import StreamingResampler, decode_pcm, encode_pcm16
from tests.media.test_audio import EXAMPLE_AUDIO

#: What StreamingResampler's docstring promises libsoxr holds back, in ms, for 20 ms chunks.
HOLD_BACK_MS = {8000: 115, 11025: 84, 22050: 40, 24000: 37, 32000: 58, 44100: 40, 48000: 37}


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000])
def test_streaming_resampler_matches_whole_file_resampling_for_any_chunking(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(int(rate * 0.77) + 3)).astype(np.float32)
    expected = to_mono_16k(x, rate)  # resample_poly over the whole recording, file-mode length
    for sizes in ([1], [7, 1000, 3], [len(x)]):
        r = StreamingResampler(rate)
        parts, i, k = [], 0, 0
        while i < len(x):
            n = sizes[k % len(sizes)]
            parts.append(r.push(x[i : i + n]))
            i, k = i + n, k + 1
        parts.append(r.flush())
        y = np.concatenate(parts)
        assert len(y) == len(expected) == math.ceil(len(x) * 16000 / rate)
        assert np.abs(y - expected).max() < 1e-5


def test_live_chunks_of_the_example_give_the_file_mode_samples():
    raw, rate = soundfile.read(io.BytesIO(EXAMPLE_AUDIO.read_bytes()), dtype="float32")
    r = StreamingResampler(rate)
    chunk = rate // 50  # 20 ms, as live clients send
    live = np.concatenate([r.push(raw[i : i + chunk]) for i in range(0, len(raw), chunk)] + [r.flush()])
    np.testing.assert_array_equal(live, to_mono_16k(raw, rate))


def test_resampler_emits_as_soon_as_input_allows():
    r = StreamingResampler(48000)
    out = r.push(np.zeros(4800, np.float32))  # 100 ms in
    assert 1468 <= len(out) <= 1600  # libsoxr's HQ delay: under 9 ms of the first 100 ms held back
    assert len(StreamingResampler(16000).push(np.zeros(100, np.float32))) == 100  # 16 kHz passes through


@pytest.mark.parametrize("rate", sorted(HOLD_BACK_MS))
def test_resampler_hold_back_stays_within_the_documented_bound(rate):
    r = StreamingResampler(rate)
    chunk, out = rate // 50, 0
    for pushed in range(1, 101):
        out += len(r.push(np.zeros(chunk, np.float32)))
        assert pushed * chunk * 16000 / rate - out <= HOLD_BACK_MS[rate] * 16


def test_decode_pcm_formats_and_errors():
    stereo = np.array([[1000, -1000], [3000, 1000]], "<i2").tobytes()
    assert np.allclose(decode_pcm(stereo, sample_type="int16", channels=2), [0.0, 2000 / 32768])
    f = np.array([0.5, -0.25], "<f4").tobytes()
    assert np.allclose(decode_pcm(f, sample_type="float32", channels=1), [0.5, -0.25])
    for data, kind, channels in (
        (b"\x00" * 3, "int16", 1),
        (b"\x00" * 6, "int16", 2),
        (b"\x00" * 6, "float32", 1),
        (np.array([np.nan], "<f4").tobytes(), "float32", 1),
    ):
        with pytest.raises(MediaError) as info:
            decode_pcm(data, sample_type=kind, channels=channels)
        assert info.value.code == ErrorCode.AUDIO_INVALID


def test_encode_pcm16_clips():
    assert np.frombuffer(encode_pcm16(np.array([2.0, -2.0, 0.5], np.float32)), "<i2").tolist() == [32767, -32767, 16384]
