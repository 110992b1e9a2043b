"""Behaviour of the lite backend through its public interface (real mediapipe, CPU)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from ditto import SAMPLES_PER_FRAME
from ditto.backends.base import StreamOptions
from ditto.backends.factory import create_backend
from ditto.backends.lite import LOOKAHEAD_FRAMES, LiteBackend
from ditto.backends.lite import landmarks as lm
from ditto.backends.lite.speech import SETTLE_FRAMES
from ditto.errors import ErrorCode, SourceError
from ditto.settings import Settings
from tests.backends.lite.conftest import speech, vowel
from tests.conftest import FakeClock


def render_all(backend, avatar, audio, *, seed=0, chunks=None):
    """Frames and per-frame motion for ``audio`` fed in ``chunks`` (sizes) or in one go."""
    stream = backend.open_stream(avatar, seed=seed)
    frames, motions = [], []

    def take(it):
        for frame in it:
            frames.append(frame)
            motions.append(stream.last_motion)

    if chunks is None:
        take(stream.feed(audio))
    else:
        pos = 0
        for size in chunks:
            take(stream.feed(audio[pos : pos + size]))
            pos += size
        assert pos == len(audio)
    take(stream.finish())
    stream.close()
    return frames, motions


def mouth_box(avatar, pad: float = 0.35):
    """Image slices around the source mouth (outer lips grown by ``pad`` of the mouth width)."""
    pts = avatar.landmarks.points[list(lm.LIPS_OUTER_UPPER + lm.LIPS_OUTER_LOWER)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    m = pad * (hi[0] - lo[0])
    return slice(int(lo[1] - m), int(hi[1] + m)), slice(int(lo[0] - m), int(hi[0] + m))


def eye_box(avatar):
    pts = avatar.landmarks.points[list(lm.RIGHT_EYE_UPPER + lm.RIGHT_EYE_LOWER + lm.RIGHT_EYE_CORNERS)]
    lo, hi = pts.min(axis=0) - 3, pts.max(axis=0) + 3
    return slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0]))


def mean_abs_diff(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize(
    "image",
    [np.full((256, 256, 3), 128, np.uint8), np.random.default_rng(0).integers(0, 256, (256, 320, 3), dtype=np.uint8)],
    ids=["flat", "noise"],
)
def test_no_face_raises_source_error(backend, image):
    with pytest.raises(SourceError) as err:
        backend.register_source(image)
    assert err.value.code == ErrorCode.NO_FACE


def test_avatar_has_source_size(avatar, source_image):
    assert (avatar.height, avatar.width) == source_image.shape[:2]
    assert LiteBackend.name == "lite"


@pytest.mark.parametrize("n_samples", [0, 1, 639, 640, 641, 1280, 5 * 640 + 17, 16000])
def test_frame_count_is_ceil_samples_over_640(backend, avatar, n_samples):
    frames, _ = render_all(backend, avatar, speech(1.0)[:n_samples])
    assert len(frames) == math.ceil(n_samples / SAMPLES_PER_FRAME)
    assert [f.index for f in frames] == list(range(len(frames)))


def test_output_frames_are_rgb_uint8_at_source_size(backend, avatar, source_image):
    frames, _ = render_all(backend, avatar, speech(0.5))
    for frame in frames:
        assert frame.image.shape == source_image.shape
        assert frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous
    assert not np.shares_memory(frames[0].image, frames[1].image)


def test_same_frames_whatever_the_chunking(backend, avatar):
    audio = speech(2.0, seed=3)
    whole, _ = render_all(backend, avatar, audio)
    rng = np.random.default_rng(7)
    sizes = [0, 1, 639, 2, 1281]
    while sum(sizes) < len(audio):
        sizes.append(int(rng.integers(1, 3000)))
    sizes[-1] -= sum(sizes) - len(audio)
    chunked, _ = render_all(backend, avatar, audio, chunks=sizes)
    assert len(whole) == len(chunked) == math.ceil(len(audio) / SAMPLES_PER_FRAME)
    for a, b in zip(whole, chunked):
        assert a.index == b.index
        np.testing.assert_array_equal(a.image, b.image)


def test_frames_come_out_after_their_audio_plus_lookahead(backend, avatar):
    stream = backend.open_stream(avatar, seed=0)
    assert list(stream.feed(np.zeros(SAMPLES_PER_FRAME * (LOOKAHEAD_FRAMES + 1) - 1, np.float32))) == []
    assert [f.index for f in stream.feed(np.zeros(1, np.float32))] == [0]
    assert [f.index for f in stream.finish()] == list(range(1, LOOKAHEAD_FRAMES + 1))


def test_same_seed_same_frames_other_seed_other_blinks(backend, avatar):
    audio = speech(8.0, seed=1)
    a, motion_a = render_all(backend, avatar, audio, seed=11)
    b, _ = render_all(backend, avatar, audio, seed=11)
    c, motion_c = render_all(backend, avatar, audio, seed=12)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.image, fb.image)
    assert [m.blink for m in motion_a] != [m.blink for m in motion_c]
    assert any(not np.array_equal(fa.image, fc.image) for fa, fc in zip(a, c))


def test_silence_keeps_the_mouth_closed(still_backend, still_avatar, source_image):
    frames, motions = render_all(still_backend, still_avatar, np.zeros(3 * 16000, np.float32))
    assert all(m.jaw_open == 0.0 and m.lip_spread == 0.0 for m in motions)
    box = mouth_box(still_avatar)
    for frame in frames:
        assert mean_abs_diff(frame.image[box], source_image[box]) < 0.5


def test_loud_speech_opens_the_mouth_with_a_dark_interior(still_backend, still_avatar, source_image):
    frames, motions = render_all(still_backend, still_avatar, vowel(1.5, level=0.5))
    jaw = np.array([m.jaw_open for m in motions])
    assert jaw[5:-3].min() > 0.6
    box = mouth_box(still_avatar)
    open_frame = frames[len(frames) // 2].image[box]
    assert mean_abs_diff(open_frame, source_image[box]) > 8.0
    luma = lambda img: img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # noqa: E731
    dark_src = (luma(source_image[box]) < 60).mean()
    dark_open = (luma(open_frame) < 60).mean()
    assert dark_open > dark_src + 0.03


def test_mouth_follows_speech_and_closes_in_pauses(backend, avatar):
    audio = np.concatenate([vowel(1.0, 0.4), np.zeros(16000, np.float32), vowel(1.0, 0.4)])
    _, motions = render_all(backend, avatar, audio)
    jaw = np.array([m.jaw_open for m in motions])
    assert jaw[5:22].mean() > 0.5  # speaking
    assert np.all(jaw[33:49] < 0.01) and np.all(jaw[38:49] == 0.0)  # pause, after ~200 ms of release
    assert jaw[55:70].mean() > 0.5  # speaking again


def test_blinks_happen_within_ten_seconds(still_backend, still_avatar, source_image):
    frames, motions = render_all(still_backend, still_avatar, np.zeros(10 * 16000, np.float32), seed=5)
    blink = np.array([m.blink for m in motions])
    onsets = np.flatnonzero((blink[1:] > 0) & (blink[:-1] == 0))
    assert 2 <= len(onsets) <= 7
    assert blink.max() == 1.0
    assert (blink > 0).sum() <= 6 * len(onsets)  # each blink lasts ~160 ms (4-5 frames)
    eye = eye_box(still_avatar)
    closed = frames[int(np.argmax(blink))].image[eye]
    assert mean_abs_diff(closed, source_image[eye]) > 6.0
    assert mean_abs_diff(frames[int(np.argmin(blink))].image[eye], source_image[eye]) < 0.5


def test_pixels_outside_the_roi_are_the_source(backend, avatar, source_image):
    frames, _ = render_all(backend, avatar, speech(3.0, seed=2))
    roi = avatar.geometry.roi
    outside = np.ones(source_image.shape[:2], bool)
    outside[roi.slices] = False
    assert outside.any() and not outside.all()
    for frame in frames:
        np.testing.assert_array_equal(frame.image[outside], source_image[outside])
        # and no seam: the ROI's outermost ring is untouched too
        ring = frame.image[roi.slices]
        src = source_image[roi.slices]
        for sl in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
            np.testing.assert_array_equal(ring[sl], src[sl])


def test_the_face_moves_while_talking(backend, avatar, source_image):
    """Head sway: frames differ from the source inside the ROI even when the mouth is closed."""
    frames, motions = render_all(backend, avatar, np.zeros(4 * 16000, np.float32))
    roi = avatar.geometry.roi
    diffs = [mean_abs_diff(f.image[roi.slices], source_image[roi.slices]) for f in frames[::10]]
    assert max(diffs) > 0.5
    poses = np.array([(m.pose.roll_rad, m.pose.shift_x_px, m.pose.shift_y_px) for m in motions])
    assert np.abs(np.degrees(poses[:, 0])).max() < 3.0  # subtle


def test_idle_frames_are_flagged_and_silent(backend, avatar):
    stream = backend.open_stream(avatar, seed=0)
    talk = list(stream.feed(vowel(0.4)))
    idle = list(stream.idle(10))
    rest = list(stream.finish())
    assert not any(f.idle for f in talk)
    frames = talk + idle + rest
    assert len(frames) == 10 + math.ceil(0.4 * 16000 / SAMPLES_PER_FRAME)
    assert [f.idle for f in frames[-10:]] == [True] * 10
    assert stream.last_motion.jaw_open < 0.05


def test_flush_yields_the_utterance_and_the_stream_goes_on(backend, avatar):
    stream = backend.open_stream(avatar, seed=0)
    first = vowel(0.3)[:4500]  # 7.03 frames
    frames = list(stream.feed(first)) + list(stream.flush())
    assert [f.index for f in frames] == list(range(math.ceil(4500 / SAMPLES_PER_FRAME)))
    assert stream.samples_fed == 8 * SAMPLES_PER_FRAME  # the next audio starts at frame 8
    assert list(stream.flush()) == []
    frames += list(stream.feed(vowel(0.2))) + list(stream.finish())
    assert [f.index for f in frames] == list(range(8 + 5))
    assert not any(f.idle for f in frames)


def test_flush_gives_the_frames_finish_gives(backend, avatar):
    audio = speech(1.0, seed=4)[:9000]
    flushed = backend.open_stream(avatar, seed=3)
    finished = backend.open_stream(avatar, seed=3)
    a = list(flushed.feed(audio)) + list(flushed.flush())
    b = list(finished.feed(audio)) + list(finished.finish())
    assert len(a) == len(b) == math.ceil(9000 / SAMPLES_PER_FRAME)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.image, fb.image)


def test_idle_completes_a_partial_frame_and_yields_every_idle_frame_at_once(backend, avatar):
    stream = backend.open_stream(avatar, seed=0)
    talk = list(stream.feed(vowel(0.1)[:1000]))  # 1.56 frames
    idle = list(stream.idle(4))
    assert [f.index for f in talk + idle] == list(range(2 + 4))
    assert [f.idle for f in talk + idle] == [False] * 2 + [True] * 4
    assert [f.index for f in stream.feed(vowel(0.2))] == list(range(6, 6 + 5 - LOOKAHEAD_FRAMES))


def _open_mouth_then_interrupt(backend, avatar, taken=12):
    """A stream fed a loud vowel, ``taken`` frames pulled, then interrupted."""
    stream = backend.open_stream(avatar, seed=0)
    frames = stream.feed(vowel(1.0, level=0.5))
    shown = [next(frames) for _ in range(taken)]
    jaw = stream.last_motion.jaw_open
    assert stream.interrupt() == taken
    assert list(frames) == []  # nothing stale from the interrupted utterance
    return stream, shown, jaw


def test_interrupt_drops_the_rest_and_eases_the_mouth_shut(still_backend, still_avatar):
    stream, shown, jaw_before = _open_mouth_then_interrupt(still_backend, still_avatar)
    assert jaw_before > 0.6
    after, jaws = [], []
    for frame in stream.idle(10):
        after.append(frame)
        jaws.append(stream.last_motion.jaw_open)
    assert [f.index for f in after] == list(range(12, 22)) and all(f.idle for f in after)
    steps = np.abs(np.diff([jaw_before] + jaws))
    # a hard cut would close it in one frame (step = jaw_before); the ease spreads it over SETTLE_FRAMES
    assert steps.max() < 0.3 * jaw_before
    assert np.all(np.diff(jaws) <= 0) and jaws[SETTLE_FRAMES - 1] == 0.0 and jaws[-1] == 0.0
    box = mouth_box(still_avatar)
    images = [shown[-1].image[box]] + [f.image[box] for f in after]
    cut = mean_abs_diff(images[0], images[-1])  # last open mouth vs closed: what a pop would show
    assert cut > 5.0
    assert max(mean_abs_diff(a, b) for a, b in zip(images, images[1:])) < 0.45 * cut


def test_speech_after_an_interrupt_starts_at_the_returned_index(backend, avatar):
    stream, _, _ = _open_mouth_then_interrupt(backend, avatar, taken=5)
    frames = list(stream.feed(vowel(0.4))) + list(stream.finish())
    assert [f.index for f in frames] == list(range(5, 15)) and not any(f.idle for f in frames)


def test_a_conversation_is_one_timeline(backend, avatar):
    """feed / flush / feed / interrupt / idle / feed / finish: contiguous indices, idle where idle."""
    stream = backend.open_stream(avatar, seed=2)
    frames = list(stream.feed(speech(0.5, seed=1))) + list(stream.flush())  # 13 frames (12.5)
    second = stream.feed(speech(1.0, seed=2))
    frames += [next(second) for _ in range(6)]
    assert stream.interrupt() == 19
    frames += list(second)
    frames += list(stream.idle(5))
    frames += list(stream.feed(vowel(0.2)[:2000]))
    assert stream.samples_fed == (19 + 5) * SAMPLES_PER_FRAME + 2000
    frames += list(stream.finish())
    assert [f.index for f in frames] == list(range(19 + 5 + 4))
    assert [f.idle for f in frames] == [False] * 19 + [True] * 5 + [False] * 4
    with pytest.raises(RuntimeError):
        stream.interrupt()


def test_stream_rejects_use_after_finish_and_close_is_idempotent(backend, avatar):
    stream = backend.open_stream(avatar, seed=0)
    list(stream.finish())
    with pytest.raises(RuntimeError):
        stream.feed(np.zeros(10, np.float32))
    stream.close()
    stream.close()


def test_concurrent_registrations(backend, source_image):
    results, errors = [], []

    def register():
        try:
            results.append(backend.register_source(source_image))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(results) == 3
    for other in results[1:]:
        np.testing.assert_allclose(other.landmarks.points, results[0].landmarks.points, atol=1e-3)


def test_render_slots_come_from_the_settings_and_must_be_positive():
    assert create_backend(Settings(backend="lite")).render_slots == 2
    assert create_backend(Settings(backend="lite", lite_render_slots=5)).render_slots == 5
    with pytest.raises(ValueError, match="render_slots"):
        LiteBackend(render_slots=0)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def clocked_backend(clock) -> LiteBackend:
    return LiteBackend(clock=clock)


def unshed_frames(backend, avatar, audio) -> list:
    stream = backend.open_stream(avatar, seed=0)
    return [*stream.feed(audio), *stream.finish()]


@pytest.mark.parametrize(
    "options,clock_origin,now,first_rendered",
    [
        # 2 s sent at once at t=0, rendered at t=1: only the frames due 0.5 s before that are shed
        # (frame i is due when its audio ends, (i + 1) / 25 s on the media clock): 0..11
        (StreamOptions(live=True, max_lag_s=0.5), 0.0, 1.0, 12),
        (StreamOptions(live=True, max_lag_s=0.5), None, 1.0, None),  # no media clock: late from arrival
        (StreamOptions(live=True, max_lag_s=0.5), 0.0, 0.4, 0),  # within the bound
        (StreamOptions(live=True), 0.0, 100.0, 0),  # no bound
        (StreamOptions(live=False, max_lag_s=0.5), 0.0, 100.0, 0),  # file mode never sheds
    ],
)
def test_a_live_stream_sheds_what_is_past_its_lag_bound_on_the_media_clock(
    clocked_backend, clock, avatar, options, clock_origin, now, first_rendered
):
    audio = speech(2.0)
    clock.now = now
    stream = clocked_backend.open_stream(avatar, seed=0, options=options)
    during = list(stream.feed(audio, received_at=0.0, clock_origin=clock_origin))
    after = list(stream.finish())
    frames = during + after
    assert len(during) == 50 - LOOKAHEAD_FRAMES and after
    assert [f.index for f in frames] == list(range(50))
    shed = [f.index for f in during if f.shed]
    assert shed == list(range(first_rendered if first_rendered is not None else len(during)))
    assert all((f.image is None) == f.shed for f in frames)
    assert not any(f.shed for f in after)  # the end of an utterance is never shed
    # shedding skips the render only: every frame rendered is that of a stream that rendered them all
    for frame, expected in zip(frames, unshed_frames(clocked_backend, avatar, audio)):
        if not frame.shed:
            np.testing.assert_array_equal(frame.image, expected.image)


@pytest.mark.parametrize("requested_at,shed", [(0.0, True), (0.6, False)])
def test_idle_frames_are_shed_when_late_from_their_request(clocked_backend, clock, avatar, requested_at, shed):
    clock.now = 1.0
    stream = clocked_backend.open_stream(avatar, seed=0, options=StreamOptions(live=True, max_lag_s=0.5))
    frames = list(stream.idle(10, requested_at=requested_at))
    assert [f.index for f in frames] == list(range(10)) and all(f.idle for f in frames)
    assert all(f.shed == shed and (f.image is None) == shed for f in frames)


@pytest.mark.parametrize("requested_at,shed", [(0.25, True), (0.6, False)])
def test_idle_frames_after_an_interrupt_are_late_on_the_moved_media_clock(
    clocked_backend, clock, avatar, requested_at, shed
):
    """4 s sent at once at t=0; 10 frames out by t=0.2, then an interrupt, which moves the media clock
    back to now (the conversation's rewound: origin = 0.2 - 10 / 25 - 0.2). Idle frames asked for at
    0.25 and rendered at 1.0 are late, though on the burst's clock they would not be due before 0.8."""
    stream = clocked_backend.open_stream(avatar, seed=0, options=StreamOptions(live=True, max_lag_s=0.5))
    clock.now = 0.2
    frames = stream.feed(speech(4.0), received_at=0.0, clock_origin=0.0)
    assert not any(next(frames).shed for _ in range(10))
    assert stream.interrupt() == 10
    clock.now = 1.0
    idle = list(stream.idle(10, requested_at=requested_at, clock_origin=0.2 - 10 / 25 - 0.2))
    assert [f.index for f in idle] == list(range(10, 20))
    assert all(f.shed == shed for f in idle)
