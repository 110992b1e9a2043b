"""Pure-math tests of the Ditto streaming stages (CPU, fake LMDM sampler)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from ditto.backends.talkinghead.pipeline import audio2motion as a2m
from ditto.backends.talkinghead.pipeline import blink
from ditto.backends.talkinghead.pipeline import motion_stitch as ms
from ditto.backends.talkinghead.pipeline import putback as pb
from ditto.backends.talkinghead.pipeline.condition import (
    ConditionHandler,
    ConditionSource,
    emo_from_labels,
    parse_emo,
)
from ditto.backends.talkinghead.pipeline.stages import (
    COND_DIM,
    MOTION_DIM,
    MotionChunk,
    MotionInfo,
    SourceFrame,
    SourceInfo,
    mirror_index,
)

cv2 = pytest.importorskip("cv2")


# ---------------------------------------------------------------------------------------------
# helpers


def _motion(rng: np.random.Generator, kp: bool = True) -> MotionInfo:
    d = {
        "scale": rng.uniform(0.8, 1.2, (1, 1)),
        "pitch": rng.normal(0, 1, (1, 66)),
        "yaw": rng.normal(0, 1, (1, 66)),
        "roll": rng.normal(0, 1, (1, 66)),
        "t": rng.normal(0, 0.05, (1, 3)),
        "exp": rng.normal(0, 0.02, (1, 63)),
    }
    if kp:
        d["kp"] = rng.normal(0, 0.3, (1, 63))
    return MotionInfo.from_mapping(d)


def _cond_source(n_eye: int = 1, seed: int = 0) -> ConditionSource:
    rng = np.random.default_rng(seed)
    return ConditionSource(
        x_s_info_0=_motion(rng),
        sc=torch.as_tensor(rng.normal(size=63), dtype=torch.float32),
        eye_open=torch.as_tensor(rng.normal(size=(n_eye, 2)), dtype=torch.float32),
        eye_ball=torch.as_tensor(rng.normal(size=(n_eye, 6)), dtype=torch.float32),
    )


def _source(is_image: bool = True, n: int = 1, seed: int = 0) -> SourceInfo:
    rng = np.random.default_rng(seed)
    frames = tuple(
        SourceFrame(
            x_s_info=_motion(rng),
            f_s=torch.zeros(1),
            M_c2o=np.eye(3),
            image=torch.zeros(4, 4, 3, dtype=torch.uint8),
            eye_open=torch.zeros(1, 2),
            eye_ball=torch.zeros(1, 6),
        )
        for _ in range(n)
    )
    return SourceInfo(frames=frames, sc=frames[0].x_s_info.kp.reshape(63), is_image=is_image)


class FakeSampler:
    """Deterministic stand-in for the LMDM: depends on kp_cond and on every cond row."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        g = torch.Generator().manual_seed(1)
        self.proj = torch.randn(4, MOTION_DIM, generator=g) * 0.1

    def __call__(self, kp_cond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        assert kp_cond.shape == (1, MOTION_DIM) and cond.shape[:2] == (1, 80)
        self.calls.append((kp_cond.clone(), cond.clone()))
        feats = torch.stack(
            [cond[0, :, 0], cond[0, :, 1], torch.sin(cond[0, :, 0] * 0.37), torch.arange(80, dtype=torch.float32) / 80],
            1,
        )
        return (feats @ self.proj + 0.5 * kp_cond).unsqueeze(0)


def _features(n: int, offset: int = 0) -> torch.Tensor:
    """Feature rows whose column 0 encodes the real frame index, column 1 pseudo-random."""
    idx = torch.arange(offset, offset + n, dtype=torch.float32)
    f = torch.zeros(n, 1024)
    f[:, 0] = idx
    f[:, 1] = torch.cos(idx * 1.7)
    return f


# numpy reference of the upstream window recursion (written from docs/pipeline.md §10) -------------


def _ref_smooth(x: np.ndarray, k: int, s: int, e: int) -> np.ndarray:
    if k <= 1:
        return x
    src = x.copy()
    out = x.copy()
    n = len(x)
    h = k // 2
    for i in range(s, e):
        lo, hi = max(0, i - h), min(n, i + h + 1)
        out[i, :202] = np.mean(src[lo:hi, :202], axis=0)
    return out


class _RefWindows:
    def __init__(self, sampler, src_vec, overlap, online, fix=0, fix_dim=None, smo=3):
        self.sampler, self.overlap, self.smo = sampler, overlap, smo
        self.V = 80 - overlap
        self.F = min(overlap, self.V) if online else overlap
        self.alpha = (np.arange(self.F, dtype=np.float32) / self.F).reshape(-1, 1)
        self.src = src_vec.copy()
        self.kp = src_vec.copy()
        self.fix, self.fix_dim, self.clip_idx = fix, fix_dim, 0

    def __call__(self, cond: np.ndarray, res):
        pred = self.sampler(torch.from_numpy(self.kp)[None], torch.from_numpy(cond)[None])[0].numpy()
        if res is None:
            res = _ref_smooth(pred.copy(), self.smo, 0, 80)
        else:
            n = len(res)
            res = res.copy()
            res[n - self.F :] = (
                res[n - self.F :] * (1 - self.alpha) + pred[80 - self.V - self.F : 80 - self.V] * self.alpha
            )
            res = np.concatenate([res, pred[80 - self.V :]], 0)
            n = len(res)
            res = _ref_smooth(res, self.smo, n - self.V - self.F, n - self.V + 1)
        self.clip_idx += 1
        row = res[len(res) - self.overlap - 1]
        if self.fix > 0 and self.clip_idx % self.fix == 0:
            self.kp = self.src.copy()
            if self.fix_dim is not None:
                self.kp[self.fix_dim[0] : self.fix_dim[1]] = row[self.fix_dim[0] : self.fix_dim[1]]
        else:
            self.kp = row.copy()
        return res


def _ref_cond(aud: np.ndarray, start: int, src: ConditionSource, emo_table: np.ndarray) -> np.ndarray:
    n = len(aud)
    idx = [max(i, 0) for i in range(start, start + n)]
    eo, eb = src.eye_open.numpy(), src.eye_ball.numpy()
    return np.concatenate(
        [
            aud,
            emo_table[[i % len(emo_table) for i in idx]],
            eo[[mirror_index(i, len(eo)) for i in idx]],
            eb[[mirror_index(i, len(eb)) for i in idx]],
            np.repeat(src.sc.numpy()[None], n, 0),
        ],
        1,
    ).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# condition


def test_emo_single_label_softmax():
    v = parse_emo(4)
    assert v.shape == (1, 8) and v.dtype == np.float32
    assert v[0, 4] == pytest.approx(math.exp(8) / (math.exp(8) + 7), abs=1e-6)
    assert v[0, 4] == pytest.approx(0.9977, abs=1e-4)
    assert np.allclose(np.delete(v[0], 4), (1 - v[0, 4]) / 7, atol=1e-7)


def test_emo_forms():
    two = parse_emo([3, 4])
    assert two.shape == (1, 8) and two[0, 3] == pytest.approx(two[0, 4]) and two[0, 3] > 0.49
    per_frame = parse_emo([[4], [3, 4], [5]])
    assert per_frame.shape == (3, 8)
    assert np.allclose(per_frame[0], emo_from_labels(4)) and np.allclose(per_frame[2], emo_from_labels(5))
    table = np.random.default_rng(0).random((600, 8)).astype(np.float32)
    assert parse_emo(table) is table or np.array_equal(parse_emo(table), table)
    assert parse_emo(4, 5).shape == (5, 8)
    assert parse_emo(table, 10).shape == (10, 8)
    for bad in (8, -1, [0] * 8, "happy", np.zeros((3, 7))):
        with pytest.raises(ValueError):
            parse_emo(bad)
    with pytest.raises(ValueError):
        parse_emo(per_frame, 10)


def test_mirror_index():
    assert [mirror_index(i, 3) for i in range(9)] == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert [mirror_index(i, 1) for i in range(3)] == [0, 0, 0]


def test_condition_layout_and_indexing():
    src = _cond_source(n_eye=3)
    emo_table = np.random.default_rng(2).random((4, 8)).astype(np.float32)
    handler = ConditionHandler(src, emo_table)
    assert handler.cond_dim == COND_DIM == 1103
    aud = torch.randn(12, 1024)
    out = handler(aud, -5)
    assert out.shape == (12, 1103) and out.dtype == torch.float32
    ref = _ref_cond(aud.numpy(), -5, src, emo_table)
    np.testing.assert_array_equal(out.numpy(), ref)
    # explicit spot checks of the layout
    assert torch.equal(out[:, :1024], aud)
    np.testing.assert_array_equal(out[0, 1024:1032].numpy(), emo_table[0])  # idx -5 -> 0
    np.testing.assert_array_equal(out[11, 1024:1032].numpy(), emo_table[6 % 4])
    np.testing.assert_array_equal(out[9, 1032:1034].numpy(), src.eye_open[1].numpy())  # idx 4 -> 1
    np.testing.assert_array_equal(out[8, 1034:1040].numpy(), src.eye_ball[2].numpy())  # idx 3 -> 2
    np.testing.assert_array_equal(out[7, 1034:1040].numpy(), src.eye_ball[2].numpy())  # idx 2 -> 2
    assert torch.equal(out[:, 1040:], src.sc.expand(12, -1))
    f0 = ConditionHandler(src, 4, eye_f0_mode=True)(aud, 0)
    assert torch.equal(f0[:, 1032:1034], src.eye_open[:1].expand(12, -1))


# ---------------------------------------------------------------------------------------------
# audio2motion


def test_motion_vector_roundtrip_and_clip():
    info = _motion(np.random.default_rng(3))
    vec = a2m.motion_to_vector(info)
    assert vec.shape == (265,)
    assert vec[0] == pytest.approx(info.scale.item() - 1)
    assert torch.equal(vec[1:67], info.pitch[0]) and torch.equal(vec[199:202], info.t[0])
    assert torch.equal(vec[202:], info.exp[0])
    back = a2m.vector_to_motion(vec)
    assert back.kp is None and torch.allclose(back.scale, info.scale)
    for k in ("pitch", "yaw", "roll", "t", "exp"):
        assert torch.equal(getattr(back, k), getattr(info, k))
    vmm = np.zeros((4, 265), np.float32)
    vmm[0], vmm[1] = -0.1, 0.1
    clipped = a2m.clip_motion(torch.linspace(-1, 1, 265)[None], a2m.as_v_min_max(vmm, "cpu"))
    assert clipped.min() == pytest.approx(-0.1) and clipped.max() == pytest.approx(0.1)


@pytest.mark.parametrize("k", [3, 5, 4])
def test_smoothing_matches_reference_mean_filter(k):
    x = torch.randn(37, 265)
    for s, e in [(0, 37), (5, 20), (30, 37), (0, 1)]:
        ours = a2m.smooth_motion(x, k, s, e)
        ref = _ref_smooth(x.numpy(), k, s, e)
        np.testing.assert_array_equal(ours.numpy(), ref)
    assert torch.equal(ours[:, 202:], x[:, 202:])  # exp untouched
    assert torch.equal(a2m.smooth_motion(x, 1, 0, 37), x)


@pytest.mark.parametrize("overlap", [10, 70])
@pytest.mark.parametrize("n", [1, 9, 10, 80, 81, 150, 233])
def test_offline_window_starts_and_length(overlap, n):
    src = _cond_source()
    handler = ConditionHandler(src, 4)
    sampler = FakeSampler()
    win = a2m.MotionWindowing(sampler, a2m.motion_to_vector(src.x_s_info_0), overlap=overlap)
    out = a2m.generate_motion_offline(_features(n), handler, win)
    v = 80 - overlap
    starts = list(range(0, n, v))
    assert out.shape == (n, 265)
    assert len(sampler.calls) == len(starts) == math.ceil(n / v)
    for (_, cond), start in zip(sampler.calls, starts):
        col = cond[0, :, 0]
        real = min(80, n - start)
        assert torch.equal(col[:real], torch.arange(start, start + real, dtype=torch.float32))
        assert torch.all(col[real:] == n - 1)  # padded with the last row


@pytest.mark.parametrize("overlap,fix,fix_dim", [(10, 0, None), (70, 1, (0, 202)), (30, 2, (0, 202))])
def test_offline_values_match_reference(overlap, fix, fix_dim):
    src = _cond_source(n_eye=2)
    handler = ConditionHandler(src, [[4], [3], [5, 6]])
    vec = a2m.motion_to_vector(src.x_s_info_0)
    n = 175
    feats = _features(n)
    sampler = FakeSampler()
    win = a2m.MotionWindowing(sampler, vec, overlap=overlap, fix_kp_cond=fix, fix_kp_cond_dim=fix_dim)
    ours = a2m.generate_motion_offline(feats, handler, win)

    ref_win = _RefWindows(FakeSampler(), vec.numpy(), overlap, online=False, fix=fix, fix_dim=fix_dim)
    cond_all = _ref_cond(feats.numpy(), 0, src, parse_emo([[4], [3], [5, 6]]))
    res = None
    for start in range(0, n, 80 - overlap):
        w = cond_all[start : start + 80]
        if len(w) < 80:
            w = np.concatenate([w, np.repeat(w[-1:], 80 - len(w), 0)], 0)
        res = ref_win(w, res)
    ref = _ref_smooth(res[:n], 3, 0, n)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-6)
    # kp_cond actually followed the recursion (reset of exp dims when fix_kp_cond > 0)
    kp_used = [c[0] for c in sampler.calls]
    assert torch.equal(kp_used[0], vec[None])
    if fix == 1:
        assert torch.equal(kp_used[1][0, 202:], vec[202:])
        assert not torch.equal(kp_used[1][0, :202], vec[:202])


def _online(overlap: int, sampler=None, v_min_max=None):
    src = _cond_source()
    handler = ConditionHandler(src, 4)
    sampler = sampler or FakeSampler()
    win = a2m.MotionWindowing(
        sampler,
        a2m.motion_to_vector(src.x_s_info_0),
        overlap=overlap,
        online=True,
        fix_kp_cond=1,
        fix_kp_cond_dim=[0, 202],
    )
    prefix = torch.full((overlap, 1024), -1.0)
    return a2m.OnlineAudio2Motion(win, handler, prefix, v_min_max=v_min_max), sampler, src


@pytest.mark.parametrize("overlap,first_chunk", [(70, 3), (75, 1)])
def test_online_first_emission_chunk(overlap, first_chunk):
    online, _, _ = _online(overlap)
    counts = []
    for c in range(8):
        counts.append(len(online.push(_features(5, 5 * c))))
    first = next(i for i, n in enumerate(counts) if n > 0)
    assert first == first_chunk
    v = 80 - overlap
    assert counts[first] == v


def test_online_frame_k_needs_features_through_10k_plus_19():
    online, _, _ = _online(70)
    emitted_at: dict[int, int] = {}
    for i in range(120):
        chunk = online.push(_features(1, i))
        for j in range(len(chunk)):
            emitted_at[chunk.start_frame + j] = i  # index of the last feature available
    assert emitted_at, "nothing emitted"
    for k, last_feature in emitted_at.items():
        assert last_feature == 10 * (k // 10) + 19


@pytest.mark.parametrize("seconds,expected_audio,expected_emitted", [(15.75, 394, 410), (18.0, 450, 460)])
def test_online_total_frames(seconds, expected_audio, expected_emitted):
    samples = int(round(seconds * 16000))
    assert math.ceil(samples / 16000 * 25) == expected_audio
    n_chunks = math.ceil((samples + 1920) / 3200)  # caller prepends 3*640 zeros, hop 3200
    online, _, _ = _online(70)
    total = 0
    for c in range(n_chunks):
        total += len(online.push(_features(5, 5 * c)))
    tail = online.finish()
    total += len(tail)
    assert total == expected_emitted
    assert tail.start_frame + len(tail) == expected_emitted
    with pytest.raises(RuntimeError):
        online.push(_features(5))


@pytest.mark.parametrize("overlap", [70, 75])
@pytest.mark.parametrize("frames", [1, 2, 3, 5, 9, 10, 11, 12])
def test_online_short_audio_emits_every_frame(overlap, frames):
    """Audio shorter than window 0's real rows (V frames' features): upstream's worker primes on the
    padded window and emits nothing; every frame of the audio must still come out."""
    samples = frames * 640
    n_chunks = math.ceil((samples + 1920) / 3200)  # as in test_online_total_frames
    features = _features(5 * n_chunks)
    online, _, _ = _online(overlap)
    first, rows = _rows([online.push(features[5 * c : 5 * c + 5]) for c in range(n_chunks)] + [online.finish()])
    assert first == 0 and rows.shape[0] >= frames
    # the same rows as a longer stream whose tail repeats the last feature row (what the padding stands for)
    longer, _, _ = _online(overlap)
    padded = torch.cat([features, features[-1:].expand(80, -1)])
    _, expected = _rows([longer.push(padded), longer.finish()])
    v = 80 - overlap
    torch.testing.assert_close(rows[: min(frames, v)], expected[: min(frames, v)], rtol=0, atol=0)


def _rows(chunks) -> tuple[int, torch.Tensor]:
    """(first frame, rows) of consecutive MotionChunks."""
    chunks = list(chunks)
    for a, b in zip(chunks, chunks[1:]):
        assert a.start_frame + len(a) == b.start_frame
    return chunks[0].start_frame, torch.cat([c.motion for c in chunks])


def test_online_flush_on_the_window_grid_goes_on_as_one_stream():
    """Flushed at frame 40 (a window boundary) and continued with features equal to the flush's
    padding, the recursion gives exactly the motion of one uninterrupted stream."""
    padding = _features(1, 39).expand(60, -1)
    whole, _, _ = _online(70)
    reference = [whole.push(_features(5, 5 * c)) for c in range(8)] + [whole.push(padding)]
    flushed, _, _ = _online(70)
    chunks = [flushed.push(_features(5, 5 * c)) for c in range(8)]
    tail = flushed.flush(_features(5, 40), end_frame=40)  # rows of frames >= 40 are dropped
    assert tail.start_frame + len(tail) == 40
    chunks += [tail, flushed.push(padding)]
    first, rows = _rows(chunks)
    ref_first, ref_rows = _rows(reference)
    assert first == ref_first == 0 and rows.shape[0] == ref_rows.shape[0]
    torch.testing.assert_close(rows, ref_rows, rtol=0, atol=0)


@pytest.mark.parametrize("overlap,end", [(70, 43), (75, 17), (70, 3)])
def test_online_flush_emits_to_the_end_and_the_next_window_continues_there(overlap, end):
    online, sampler, _ = _online(overlap)
    real = _features(end)
    chunks = [online.push(real[i : i + 5]) for i in range(0, end, 5)]
    chunks.append(online.flush(_features(5, end), end_frame=end))
    first, rows = _rows(chunks)
    assert first == 0 and rows.shape[0] == end
    calls = len(sampler.calls)
    after = online.push(_features(40, 1000))  # the next utterance (column 0: 1000 + frame offset)
    assert after.start_frame == end and len(after) > 0
    # its first window: S - V - F frames of the past (the prefix's -1 before frame 0), then the new audio
    v = 80 - overlap
    f = min(overlap, v)
    frames = np.arange(end - (80 - v - f), end - (80 - v - f) + 80)
    expected = np.where(frames < 0, -1.0, np.where(frames < end, frames, 1000 + frames - end))
    np.testing.assert_array_equal(sampler.calls[calls][1][0, :, 0].numpy(), expected)


def test_online_first_frame_numbers_the_frames_after_an_interrupt():
    src = _cond_source()
    win = a2m.MotionWindowing(FakeSampler(), a2m.motion_to_vector(src.x_s_info_0), overlap=75, online=True)
    online = a2m.OnlineAudio2Motion(win, ConditionHandler(src, 4), torch.full((75, 1024), -1.0), first_frame=30)
    first, rows = _rows([online.push(_features(5, 5 * c)) for c in range(4)])
    assert first == 30 and rows.shape[0] == 15  # windows 1..3: 5 frames each


def test_motion_ease_goes_from_the_held_row_to_the_new_rows_without_a_jump():
    ease = a2m.MotionEase(torch.zeros(265), start_frame=10, frames=6)
    eased = ease(MotionChunk(start_frame=10, motion=torch.ones(9, 265)))
    weights = eased.motion[:, 0]
    assert eased.start_frame == 10
    assert 0 < float(weights[0]) < 0.1  # the first frame after it is still almost the held one
    assert torch.all(weights[1:] >= weights[:-1]) and float(weights.diff().max()) <= 0.26
    assert torch.all(weights[5:] == 1)  # from start + frames - 1 on: the new motion
    later = ease(MotionChunk(start_frame=20, motion=torch.ones(2, 265)))
    assert torch.equal(later.motion, torch.ones(2, 265))
    assert a2m.MotionEase(torch.zeros(265), 10, frames=0)(MotionChunk(10, torch.ones(1, 265))).motion[0, 0] == 1


def test_online_values_match_reference_worker():
    overlap = 70
    vmm = np.zeros((4, 265), np.float32)
    vmm[0], vmm[1] = -0.3, 0.3
    online, _, src = _online(overlap, v_min_max=a2m.as_v_min_max(vmm, "cpu"))
    n_real = 137
    feats = _features(n_real)
    got = [online.push(feats[i : i + 5]).motion for i in range(0, n_real, 5)]
    got.append(online.finish().motion)
    ours = torch.cat(got, 0).numpy()

    # reference: the upstream online worker, all features at once
    ref_win = _RefWindows(
        FakeSampler(), a2m.motion_to_vector(src.x_s_info_0).numpy(), overlap, online=True, fix=1, fix_dim=(0, 202)
    )
    buf = np.concatenate([np.full((overlap, 1024), -1.0, np.float32), feats.numpy()], 0)
    emo = parse_emo(4)
    res, valid_start, local, out = None, None, 0, []
    while local < len(buf):
        w = buf[local : local + 80]
        real = 80 - overlap
        if len(w) < 80:
            real = len(w)
            w = np.concatenate([w, np.repeat(w[-1:], 80 - len(w), 0)], 0)
        res = ref_win(_ref_cond(w, local - overlap, src, emo), res)
        if valid_start is None:
            valid_start = len(res) - min(overlap, 80 - overlap)
            d0 = np.clip(res[0], vmm[0], vmm[1])
        else:
            out.append(res[valid_start : valid_start + real])
            valid_start += real
        local += real
    ref = np.clip(np.concatenate(out, 0), vmm[0], vmm[1])
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a2m.motion_to_vector(online.d0).numpy(), d0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# blink / fades


def _blink_starts(rows: list[int]) -> list[int]:
    return [i for i, r in enumerate(rows) if r == 0 and i + 1 < len(rows) and rows[i + 1] == 1]


def test_blink_schedule_random_seeded():
    rows = blink.blink_schedule(3000, 15, 0, rng=random.Random(7))
    assert rows == blink.blink_schedule(3000, 15, 0, rng=random.Random(7))
    assert rows != blink.blink_schedule(3000, 15, 0, rng=random.Random(8))
    starts = _blink_starts(rows)
    assert len(starts) > 20
    assert 60 <= starts[0] <= 100
    for a, b in zip(starts, starts[1:]):
        assert 15 + 60 <= b - a <= 15 + 100
    for s in starts:
        assert rows[s : s + 15] == list(range(15))
    assert sum(1 for r in rows if r) == 14 * len(starts)
    # same draw order as upstream: start gap, end gap, then one gap per blink
    r = random.Random(7)
    first, end = r.randint(60, 100), r.randint(60, 100)
    assert starts[0] == first
    assert starts[-1] < 3000 - max(end, 15)
    assert starts[1] - starts[0] == 15 + r.randint(60, 100)


def test_blink_schedule_options():
    rng = random.Random(0)
    assert blink.blink_schedule(500, 15, -1, rng=rng) == [0] * 500
    fixed = blink.blink_schedule(400, 15, 70, rng=rng)
    assert _blink_starts(fixed) == [70, 155, 240, 325]  # next start 410 >= 400 - 70
    cyc = blink.blink_schedule(600, 15, [60, 80], rng=rng)
    assert _blink_starts(cyc) == [60, 155, 230, 325, 400, 495]  # gaps 80,60,80,60,80; end guard 80
    assert blink.blink_schedule(50, 15, 0, rng=random.Random(1)) == [0] * 50
    assert blink.schedule_frames(-1) == 3000 and blink.schedule_frames(123) == 123
    with pytest.raises(ValueError):
        blink.blink_schedule(100, 15, "x", rng=rng)


def test_fade_alphas():
    assert blink.fade_alphas(10, fade_in=4) == {0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75}
    out = blink.fade_alphas(10, fade_out=3)
    assert out == pytest.approx({6: 1.0, 7: 2 / 3, 8: 1 / 3, 9: 0.0})
    merged = blink.apply_fades({0: {"delta_yaw": 1}}, 10, fade_in=2)
    assert merged[0] == {"delta_yaw": 1, "fade_alpha": 0.0} and merged[1] == {"fade_alpha": 0.5}
    assert blink.ctrl_for_frame(merged, 5) == {} and blink.ctrl_for_frame([{"a": 1}], 0) == {"a": 1}


# ---------------------------------------------------------------------------------------------
# motion stitch


def _sharp_logits(bin_index: int) -> torch.Tensor:
    x = torch.full((1, 66), -1e4)
    x[0, bin_index] = 0
    return x


def test_pose_to_degrees():
    assert ms.pose_to_degrees(torch.zeros(1, 66)).item() == pytest.approx(0.0, abs=1e-4)  # bin 32.5
    assert ms.pose_to_degrees(_sharp_logits(40)).item() == pytest.approx(22.5, abs=1e-4)
    deg = np.array([5.0], dtype=np.float32)
    assert ms.pose_to_degrees(deg) is deg  # already degrees: returned as it is


def test_keypoint_transform_hand_rotation():
    # pitch bin 40 -> 22.5, yaw bin 25 -> -22.5, roll bin 35 -> 7.5 degrees
    p, y, r = (math.radians(a) for a in (22.5, -22.5, 7.5))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    rot = (rz @ ry @ rx).T
    rng = np.random.default_rng(5)
    kp = rng.normal(size=(21, 3))
    exp = rng.normal(size=(21, 3)) * 0.01
    scale, t = 1.3, np.array([0.1, -0.2, 0.7])
    expected = scale * (kp @ rot + exp)
    expected[:, :2] += t[:2]
    info = {
        "kp": torch.tensor(kp.reshape(1, 63), dtype=torch.float32),
        "exp": torch.tensor(exp.reshape(1, 63), dtype=torch.float32),
        "scale": torch.tensor([[scale]], dtype=torch.float32),
        "t": torch.tensor(t[None], dtype=torch.float32),
        "pitch": _sharp_logits(40),
        "yaw": _sharp_logits(25),
        "roll": _sharp_logits(35),
    }
    out = ms.transform_keypoint(info)
    assert out.shape == (1, 21, 3)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    # pure yaw rotates the x axis toward -z for positive yaw (column-vector Ry)
    only_yaw = dict(
        info,
        pitch=torch.tensor([0.0]),
        roll=torch.tensor([0.0]),
        yaw=torch.tensor([30.0]),
        kp=torch.tensor([[1.0, 0, 0] + [0.0] * 60]),
        exp=torch.zeros(1, 63),
        scale=torch.ones(1, 1),
        t=torch.zeros(1, 3),
    )
    v = ms.transform_keypoint(only_yaw)[0, 0]
    np.testing.assert_allclose(v, [math.cos(math.radians(30)), 0, -math.sin(math.radians(30))], atol=1e-6)


@pytest.mark.parametrize("dyaw,dpitch", [(10.0, 4.0), (-8.0, -3.0)])
def test_gaze_constants(dyaw, dpitch):
    exp = torch.zeros(1, 63)
    out = ms.gaze_exp_delta(torch.tensor([dyaw]), torch.tensor([dpitch]), exp)
    dx, dy = dyaw * 0.26, dpitch * 0.28
    g33, g45 = (0.0007, 0.001) if dx > 0 else (0.001, 0.0007)
    expected = np.zeros(63)
    expected[33], expected[45] = dx * g33, dx * g45
    expected[34] = expected[46] = -0.001 * dy
    np.testing.assert_allclose(out[0], expected, atol=1e-8)


def test_motion_stitch_composition_image():
    source = _source(is_image=True)
    src = source.frames[0].x_s_info
    rng = np.random.default_rng(11)
    d0, d1 = _motion(rng, kp=False), _motion(rng, kp=False)
    delta_eye = torch.as_tensor(rng.normal(0, 0.01, (15, 63)), dtype=torch.float32)
    calls = []

    def stitch(x_s, x_d):
        calls.append((x_s, x_d))
        return x_d + 1

    st = ms.MotionStitcher(
        source, stitch_fn=stitch, delta_eye_arr=delta_eye, delta_eye_open_n=-1, rng=random.Random(0), d0=d0
    )
    kps = st(0, d1, {})
    # reconstruct by hand
    lip = np.zeros((21, 3))
    lip[list(ms.LIP_KPS)] = 1
    eye = np.zeros((21, 3))
    eye[list(ms.EYE_KPS)] = 1
    lip, eye = lip.reshape(1, 63), eye.reshape(1, 63)
    s, a, b = src.as_dict(), d1.as_dict(), d0.as_dict()
    mixed = {k: s[k] + (a[k] - b[k]) for k in ("pitch", "yaw", "roll", "t", "exp")}
    exp = mixed["exp"].numpy() * lip + s["exp"].numpy() * (1 - lip) + delta_eye[0:1].numpy() * eye
    dyaw = ms.pose_to_degrees(mixed["yaw"]) - ms.pose_to_degrees(s["yaw"])
    dpitch = ms.pose_to_degrees(mixed["pitch"]) - ms.pose_to_degrees(s["pitch"])
    exp = ms.gaze_exp_delta(dyaw, dpitch, torch.as_tensor(exp, dtype=torch.float32))
    x_d = ms.transform_keypoint(dict(mixed, exp=exp, scale=s["scale"], kp=s["kp"]))
    np.testing.assert_allclose(kps.x_d.numpy(), x_d + 1, atol=1e-5)
    np.testing.assert_allclose(kps.x_s.numpy(), ms.transform_keypoint(src), atol=1e-6)
    assert len(calls) == 1 and calls[0][0] is kps.x_s
    # non-lip, non-eye keypoints keep the source expression exactly: e.g. kp 0
    assert st.index == 1


def test_motion_stitch_controls_and_video_defaults():
    source = _source(is_image=False, n=3)
    rng = np.random.default_rng(12)
    d = _motion(rng, kp=False)
    st = ms.MotionStitcher(source, flag_stitching=False)
    assert st.use_d_keys == ("exp",) and st.drive_eye is False
    st(1, d)  # first frame becomes d0 -> x_d = source frame 1 exactly
    again = st(1, d)
    np.testing.assert_allclose(again.x_d.numpy(), ms.transform_keypoint(source.frames[1].x_s_info), atol=1e-6)
    # delta_pitch is added in degrees after the logit -> degree conversion
    img = _source(is_image=True)
    st2 = ms.MotionStitcher(img, flag_stitching=False, drive_eye=False, overall_ctrl_info={"delta_pitch": 2})
    st3 = ms.MotionStitcher(img, flag_stitching=False, drive_eye=False)
    base, shifted = st3(0, d), st2(0, d)
    assert not torch.allclose(base.x_d, shifted.x_d)
    src = img.frames[0].x_s_info
    deg = ms.pose_to_degrees(src.pitch) + 2
    expected = ms.transform_keypoint(dict(src.as_dict(), pitch=deg))
    np.testing.assert_allclose(shifted.x_d.numpy(), expected, atol=1e-5)
    # ch_info scale ratio turns use_d_keys into weights on exp/pose only
    st4 = ms.MotionStitcher(img, flag_stitching=False, ch_scale=2 * src.scale.item())
    assert st4.use_d_keys == {
        "exp": pytest.approx(2.0),
        "pitch": pytest.approx(2.0),
        "yaw": pytest.approx(2.0),
        "roll": pytest.approx(2.0),
        "t": 1,
    }
    with pytest.raises(ValueError):
        ms.MotionStitcher(img)  # stitching without a network


def test_motion_stitch_reads_the_motion_row_as_arrays_or_as_motion_info():
    """The stream hands the stitcher a row's fields as numpy views (``vector_to_arrays``); a
    MotionInfo of the same row stitches to the same keypoints."""
    img = _source(is_image=True)
    rows = torch.as_tensor(np.random.default_rng(14).normal(0, 0.5, (3, 265)), dtype=torch.float32)
    blinks = np.random.default_rng(15).normal(0, 0.01, (15, 63))  # float64, as a pkl may hold it
    kwargs = dict(flag_stitching=False, delta_eye_arr=blinks, delta_eye_open_n=1, rng=random.Random(0))
    as_arrays, as_info = ms.MotionStitcher(img, **kwargs), ms.MotionStitcher(img, **kwargs)
    for row in rows:
        fields = a2m.vector_to_arrays(row)
        assert np.shares_memory(fields["exp"], row.numpy())  # views: no copy per frame
        from_arrays, from_info = as_arrays(0, fields), as_info(0, a2m.vector_to_motion(row))
        assert from_arrays.x_d.dtype == from_arrays.x_s.dtype == torch.float32
        np.testing.assert_array_equal(from_arrays.x_d.numpy(), from_info.x_d.numpy())
    assert as_arrays.d0 is not None and torch.equal(as_arrays.d0.exp, rows[0, 202:].reshape(1, 63))


def test_motion_stitch_key_weights_pose_alpha_and_delta_exp():
    img = _source(is_image=True)
    rng = np.random.default_rng(16)
    d0, d1 = _motion(rng, kp=False), _motion(rng, kp=False)
    delta_exp = rng.normal(0, 0.01, 63)
    st = ms.MotionStitcher(img, flag_stitching=False, drive_eye=False, use_d_keys={"exp": 0.5, "yaw": 2.0}, d0=d0)
    out = st(0, d1, {"alpha_yaw": np.float64(0.5), "delta_exp": delta_exp})
    src, a, b = (info.as_dict() for info in (img.frames[0].x_s_info, d1, d0))
    lip = np.zeros((21, 3))
    lip[list(ms.LIP_KPS)] = 1
    lip = lip.reshape(1, 63)
    exp = (src["exp"] + (a["exp"] - b["exp"]) * 0.5).numpy() * lip + src["exp"].numpy() * (1 - lip) + delta_exp
    yaw = (src["yaw"] + (a["yaw"] - b["yaw"]) * 2.0) * 0.5  # weighted, then alpha_yaw (on the logits)
    expected = ms.transform_keypoint(dict(src, exp=exp, yaw=yaw))  # pitch, roll, t: the source's (not in the keys)
    assert out.x_d.dtype == torch.float32
    np.testing.assert_allclose(out.x_d.numpy(), expected, atol=1e-5)


def test_motion_stitch_fade_d0_and_vad():
    img = _source(is_image=True)
    rng = np.random.default_rng(13)
    d0, d1 = _motion(rng, kp=False), _motion(rng, kp=False)
    st = ms.MotionStitcher(img, flag_stitching=False, drive_eye=False, fade_type="d0", d0=d0)
    st(0, d0, {"fade_alpha": 0.0})  # first driven frame = fade target
    faded = st(0, d1, {"fade_alpha": 0.0})  # exp pulled fully back to the first frame's
    plain = ms.MotionStitcher(img, flag_stitching=False, drive_eye=False, d0=d0)(0, d1)
    src = img.frames[0].x_s_info.as_dict()
    a, b = d1.as_dict(), d0.as_dict()
    pose = {k: src[k] + (a[k] - b[k]) for k in ("pitch", "yaw", "roll", "t")}
    exp_first = src["exp"]  # d0 - d0 = 0 -> first frame exp = source exp
    expected = ms.transform_keypoint(dict(src, **pose, exp=exp_first))
    np.testing.assert_allclose(faded.x_d.numpy(), expected, atol=1e-5)
    assert not torch.allclose(plain.x_d, faded.x_d)
    vad = ms.MotionStitcher(img, flag_stitching=False, drive_eye=False, d0=d0)(0, d1, {"vad_alpha": 0.0})
    np.testing.assert_allclose(vad.x_d.numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# paste back


def _ref_mask() -> np.ndarray:
    """Independent per-pixel formulation of the 512 feather mask."""
    n, inner, lo = 512, 460, 26
    hi = lo + inner
    ramp_up = np.linspace(0, 1, lo)
    ramp_dn = np.linspace(1, 0, n - hi)
    m = np.ones((n, n), np.float32)
    for yy in range(n):
        for xx in range(n):
            in_x, in_y = lo <= xx < hi, lo <= yy < hi
            if in_x and in_y:
                continue
            u = 0.0 if in_x else (1 - ramp_up[xx] if xx < lo else 1 - ramp_dn[xx - hi])
            v = 0.0 if in_y else (1 - ramp_up[yy] if yy < lo else 1 - ramp_dn[yy - hi])
            if in_x:
                m[yy, xx] = np.float32(1 - v)
            elif in_y:
                m[yy, xx] = np.float32(1 - u)
            else:
                m[yy, xx] = np.float32(1) - np.float32(min(1.0, math.hypot(u, v)))
    return m


def test_feather_mask():
    m = pb.make_feather_mask()
    assert m.shape == (512, 512) and m.dtype == np.float32
    assert np.all(m[26:486, 26:486] == 1)
    assert m[0, 256] == 0 and m[25, 256] == 1 and m[256, 0] == 0 and m[256, 511] == 0
    assert m[0, 0] == 0 and m[25, 25] == 1 and m[511, 511] == 0
    np.testing.assert_allclose(m[:26, 256], np.linspace(0, 1, 26), atol=1e-7)
    np.testing.assert_allclose(m, _ref_mask(), atol=2e-7)


def _official_like_putback(frame, render_chw, M):
    h, w = frame.shape[:2]
    mask = pb.make_feather_mask()
    mw = cv2.warpAffine(mask, M[:2], (w, h), flags=cv2.INTER_LINEAR).clip(0, 1)
    rend = np.transpose(render_chw, (1, 2, 0)).clip(0, 1) * 255
    fw = cv2.warpAffine(rend, M[:2], (w, h), flags=cv2.INTER_LINEAR)
    out = mw[..., None] * fw + (1 - mw[..., None]) * frame.astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "angle,scale,shift", [(0.31, 0.62, (40.3, -25.7)), (-0.05, 1.37, (-180.0, -60.5)), (0.0, 0.5, (10.0, 12.0))]
)
def test_putback_matches_cv2(angle, scale, shift):
    rng = np.random.default_rng(21)
    h, w = 420, 380
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:512, 0:512] / 512.0
    render = np.stack([0.5 + 0.5 * np.sin(6 * xx + 3 * yy), yy, xx * yy], 0).astype(np.float32)
    render += rng.normal(0, 0.05, render.shape).astype(np.float32)  # texture + out-of-range values
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    # M_c2o as the registrar stores it: float32 3x3
    M = np.array(
        [[c, -s, w / 2 - 256 * c + 256 * s + shift[0]], [s, c, h / 2 - 256 * s - 256 * c + shift[1]], [0, 0, 1]],
        dtype=np.float32,
    )
    ref = _official_like_putback(frame, render, M)
    plan = pb.build_paste_plan(torch.from_numpy(frame), M)
    out = pb.paste_back(plan, torch.from_numpy(render)[None])
    assert out.dtype == torch.uint8 and out.shape == (h, w, 3)
    diff = np.abs(out.numpy().astype(int) - ref.astype(int))
    assert diff[2:-2, 2:-2].mean() < 1.0
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.999
    # and the region outside the warped mask is untouched
    y0, y1, x0, x1 = plan.box
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out.numpy()[outside], frame[outside])


@pytest.mark.parametrize("overlap", [0, 10, 70])
@pytest.mark.parametrize("n", [1, 69, 70, 150, 233])
def test_offline_rows_stream_out_window_by_window(overlap, n):
    """iter_motion_offline: contiguous chunks, a chunk after every window that fixes new rows
    (69 after the first for overlap 10), and exactly the one-shot result."""
    src = _cond_source()
    vec = a2m.motion_to_vector(src.x_s_info_0)
    feats = _features(n)
    vmm = a2m.as_v_min_max(np.stack([np.full(265, -0.5), np.full(265, 0.5)] * 2).astype(np.float32), "cpu")
    sampler = FakeSampler()
    win = a2m.MotionWindowing(sampler, vec, overlap=overlap)
    chunks = []
    for chunk in a2m.iter_motion_offline(feats, ConditionHandler(src, 4), win, v_min_max=vmm):
        chunks.append((chunk.start_frame, len(chunk), len(sampler.calls)))
        assert len(chunk) > 0
    assert [c[0] for c in chunks] == [0] + list(np.cumsum([c[1] for c in chunks])[:-1])
    assert sum(c[1] for c in chunks) == n
    if n > 80 and overlap == 10:
        assert chunks[0][:3] == (0, 69, 1)  # the first frame leaves after ONE window
    whole = a2m.generate_motion_offline(
        feats, ConditionHandler(src, 4), a2m.MotionWindowing(FakeSampler(), vec, overlap=overlap), v_min_max=vmm
    )
    ref_win = a2m.MotionWindowing(FakeSampler(), vec, overlap=overlap)
    cond_all = ConditionHandler(src, 4)(feats, 0)
    res = None
    for start in range(0, n, 80 - overlap):
        w = cond_all[start : start + 80]
        if len(w) < 80:
            w = torch.cat([w, w[-1:].expand(80 - len(w), -1)], 0)
        res = ref_win.step(w.unsqueeze(0), res)
    one_shot = a2m.clip_motion(a2m.smooth_motion(res[:n], 3, 0, n), vmm)
    assert torch.equal(whole, one_shot)


def test_paste_back_many_equals_each_render_pasted_alone():
    rng = np.random.default_rng(4)
    frame = torch.from_numpy(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8))
    M = np.array([[0.4, -0.05, 20.0], [0.05, 0.4, 15.0], [0, 0, 1]], dtype=np.float32)
    plan = pb.build_paste_plan(frame, M)
    renders = torch.from_numpy(rng.uniform(-0.1, 1.1, (3, 3, 512, 512)).astype(np.float32))
    together = pb.paste_back_many(plan, renders)
    assert together.shape == (3, 300, 280, 3)
    for render, image in zip(renders, together, strict=True):
        assert torch.equal(image, pb.paste_back(plan, render[None]))
    assert not torch.equal(together[0], together[1])
