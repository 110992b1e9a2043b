"""The Ditto backend on the generated checkpoint tree (CPU): loading, registration, offline and
online sessions, determinism, setup options, errors, and one session through the real server.

Streams that render many frames use ``fast_backend`` (the loaded models with the stand-in
renderer of ``conftest.py`` and 5 DDIM steps per window); the real renderer runs in the
server session at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import pickle
import random
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from ditto import SAMPLES_PER_FRAME
from ditto.backends.talkinghead.backend import DittoBackend
from ditto.backends.talkinghead.config import dump_cfg_pkl, load_cfg, read_cfg_dict
from ditto.backends.talkinghead.pipeline.registration import fit_to_max_size
from ditto.backends.talkinghead.runtime.onnx_runner import OnnxRunner
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner
from ditto.errors import BackendError, ConfigError, ErrorCode, SourceError
from ditto.settings import Settings
from tests.backends.talkinghead.conftest import (
    FAST_SETUP,
    ROOT,
    RecordingRunner,
    render_all,
    speech_like,
)
from tests.conftest import EXAMPLE_IMAGE, FakeClock, free_port
from tests.test_entry_points import wait_healthy

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def frames_of(backend: DittoBackend, avatar, seconds: float, seed: int = 0) -> list:
    during, after = render_all(backend.open_stream(avatar, seed=seed), speech_like(seconds))
    return during + after


def recording(backend: DittoBackend, **setup_options) -> tuple[DittoBackend, RecordingRunner, RecordingRunner]:
    """A backend sharing ``backend``'s models whose warp and stitching calls are recorded."""
    warp, stitch = RecordingRunner(backend.models.warp), RecordingRunner(backend.models.stitch)
    models = dataclasses.replace(backend.models, warp=warp, stitch=stitch)
    return (
        DittoBackend(backend.cfg, backend.device, models=models, setup_options={**FAST_SETUP, **setup_options}),
        warp,
        stitch,
    )


# -- loading and registration ---------------------------------------------------------------------


def test_from_settings_builds_every_runner(pytorch_backend) -> None:
    backend = pytorch_backend
    assert backend.name == "ditto" and backend.device == torch.device("cpu")
    assert not backend.options.online_mode and backend.options.sampling_timesteps == 50
    models = backend.models
    for runner in (
        models.lmdm,
        models.stitch,
        models.warp,
        models.decoder,
        models.registrar.motion_extractor,
        models.registrar.appearance_extractor,
    ):
        assert isinstance(runner, TorchRunner)
    assert type(models.registrar.face_mesh).__name__ == "MediaPipeFaceLandmarker"  # force_ori_type .task


def test_register_source_finds_the_face(avatar, portrait) -> None:
    assert (avatar.width, avatar.height) == (512, 512)
    frame = avatar.source.frames[0]
    assert frame.f_s.shape == (1, 32, 16, 64, 64) and torch.isfinite(frame.f_s).all()
    assert frame.x_s_info.kp.shape == (1, 63) and avatar.source.sc.shape == (63,)
    assert abs(float(frame.x_s_info.scale) - 1.5) < 0.1  # the tool's rescaled head
    assert frame.M_c2o.shape == (3, 3) and frame.M_c2o.dtype == np.float64
    assert torch.equal(frame.image.cpu(), torch.from_numpy(portrait))
    assert 0.3 < float(frame.eye_open.min()) < 1.5 and frame.eye_ball.shape == (1, 6)
    assert len(avatar.paste_plans) == 1 and avatar.source.is_image


def test_no_face_on_a_flat_image(pytorch_backend) -> None:
    with pytest.raises(SourceError) as info:
        pytorch_backend.register_source(np.full((256, 320, 3), 128, np.uint8))
    assert info.value.code == ErrorCode.NO_FACE


def test_fit_to_max_size_caps_the_long_side_and_makes_sides_even() -> None:
    image = np.zeros((601, 400, 3), np.uint8)
    assert fit_to_max_size(image, 300).shape == (300, 200, 3)
    assert fit_to_max_size(image, 1920).shape == (600, 400, 3)
    even = np.zeros((64, 48, 3), np.uint8)
    assert fit_to_max_size(even, 1920) is even


# -- sessions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.1, 0.2])
def test_offline_session_yields_one_frame_per_640_samples(fast_backend, avatar, seconds) -> None:
    audio = speech_like(seconds)
    during, after = render_all(fast_backend.open_stream(avatar, seed=1), audio, chunk=700)
    assert during == []  # offline cfg: the whole clip is generated at finish()
    assert [f.index for f in after] == list(range(math.ceil(len(audio) / SAMPLES_PER_FRAME)))
    for frame in after:
        assert frame.image.shape == (512, 512, 3) and frame.image.dtype == np.uint8


def test_online_cfg_runs_the_onnx_models(online_backend) -> None:
    options = online_backend.options
    assert options.online_mode and options.overlap_v2 == 75 and options.overall_ctrl_info == {"delta_pitch": 2}
    assert isinstance(online_backend.models.lmdm, OnnxRunner)
    assert isinstance(online_backend.models.stitch, OnnxRunner)


@pytest.mark.parametrize("seconds", [0.3, 0.6])
def test_online_session_streams_and_trims_to_the_audio(online_backend, avatar, seconds) -> None:
    audio = speech_like(seconds)
    during, after = render_all(online_backend.open_stream(avatar, seed=2), audio, chunk=1000)
    total = math.ceil(len(audio) / SAMPLES_PER_FRAME)
    assert [f.index for f in during + after] == list(range(total))  # the LMDM tail past the audio is cut
    # overlap 75: frames leave once 0.485 s of audio (plus the first window) has arrived
    assert (len(during) > 0) == (seconds > 0.5)


@pytest.mark.parametrize("frames", [1, 2])
def test_the_unchanged_online_overlap_renders_a_clip_of_one_or_two_frames(
    checkpoint_tree, online_backend, avatar, frames
) -> None:
    """overlap_v2 70, as shipped: audio this short only fills window 0 (the Serve health probe feeds 40 ms)."""
    cfg = load_cfg(checkpoint_tree.cfg_pkl("onnx_online"), checkpoint_tree.onnx)
    shipped = DittoBackend(cfg, "cpu", models=online_backend.models, setup_options=FAST_SETUP)
    assert shipped.options.overlap_v2 == 70
    during, after = render_all(shipped.open_stream(avatar, seed=0), speech_like(frames * 0.04), chunk=640)
    assert [f.index for f in during + after] == list(range(frames))


def test_a_live_session_past_its_lag_bound_sheds_frames_but_never_the_last(online_backend, avatar) -> None:
    """max_lag_s ~0: every frame has waited too long by the time the engine reaches it, so each
    is shed (no image, counted by the server as skipped) except the last, which always renders."""
    from ditto.backends.base import StreamOptions

    audio = speech_like(0.6)
    options = StreamOptions(live=True, max_lag_s=1e-9)
    during, after = render_all(online_backend.open_stream(avatar, seed=2, options=options), audio, chunk=1000)
    frames = during + after
    assert [f.index for f in frames] == list(range(math.ceil(len(audio) / SAMPLES_PER_FRAME)))
    assert all(f.shed and f.image is None for f in frames[:-1])
    assert not frames[-1].shed and frames[-1].image is not None
    relaxed = render_all(
        online_backend.open_stream(avatar, seed=2, options=StreamOptions(live=True, max_lag_s=60)), audio, chunk=1000
    )
    assert not any(f.shed for f in relaxed[0] + relaxed[1])


def test_the_lag_bound_counts_from_when_the_audio_arrived_or_was_due(online_backend, avatar) -> None:
    """Audio that waited in queues before the session fed it (received 30 s ago): the frames its chunks
    make computable are past a 10 s lag bound however fast the motion and the render then are, so they
    are shed; the same audio received now is rendered in full, and so is audio received 30 s ago whose
    frames are due on the media clock only from now on (sent ahead of real time). (The tail that
    finish() makes computable became possible only then.)"""
    import time

    from ditto.backends.base import StreamOptions

    audio = speech_like(1.2)
    options = StreamOptions(live=True, max_lag_s=10.0)

    def frames(received_at: float | None, clock_origin: float | None = None) -> tuple[list, list]:
        stream = online_backend.open_stream(avatar, seed=2, options=options)
        chunks = [audio[start : start + 1000] for start in range(0, len(audio), 1000)]
        during = [
            frame
            for chunk in chunks
            for frame in stream.feed(chunk, received_at=received_at, clock_origin=clock_origin)
        ]
        after = list(stream.finish())
        stream.close()
        return during, after

    long_ago = time.monotonic() - 30.0
    during, after = frames(long_ago)
    assert during and all(f.shed for f in during)
    assert not after[-1].shed
    during, _ = frames(long_ago, clock_origin=long_ago)  # due as it arrived: as late
    assert during and all(f.shed for f in during)
    assert not any(f.shed for part in frames(None) for f in part)
    assert not any(f.shed for part in frames(long_ago, clock_origin=time.monotonic()) for f in part)


def test_a_clip_fed_at_once_hands_out_its_first_frame_after_its_first_lmdm_windows(online_backend, avatar) -> None:
    """The motion of audio fed in one call is computed a window at a time with the frames it made
    ready rendered in between: the first frame of a 2 s clip (50 frames, 5 new frames per LMDM
    window) comes out after the two windows it needs, not after all of them. The frames are those
    of the same audio fed in chunks."""
    from ditto.backends.base import StreamOptions

    def lmdm_windows() -> int:
        return online_backend.stage_stats()["lmdm"].items

    audio, options = speech_like(2.0), StreamOptions(total_frames=50)
    stream = online_backend.open_stream(avatar, seed=2, options=options)
    before = lmdm_windows()
    frames = stream.feed(audio)
    first = next(frames)
    at_first = lmdm_windows() - before
    rest = [*frames, *stream.finish()]
    stream.close()
    assert first.index == 0 and [f.index for f in rest] == list(range(1, 50))
    assert at_first <= 3 < 10 <= lmdm_windows() - before
    chunked = sum(render_all(online_backend.open_stream(avatar, seed=2, options=options), audio), [])
    for frame, expected in zip([first, *rest], chunked, strict=True):
        np.testing.assert_array_equal(frame.image, expected.image)


@pytest.mark.parametrize(
    "live,behind_s",
    [(False, 0.0), (False, 100.0), (True, 0.0)],
    ids=["file-ahead-of-pace", "file-behind-pace", "live"],
)
def test_frames_are_due_by_pace_and_submission_in_file_mode_as_their_audio_came_live(
    online_backend, avatar, monkeypatch, live, behind_s
):
    """File mode: a frame is due the file slack after its time at real-time pace from the clip's first
    feed, or after it was submitted if that is later: the engine's earliest-deadline-first puts file
    sessions ahead of their pace behind those that are not, and no file frame outranks live work
    submitted with it. Live audio without a media clock is due a frame period after it arrived: the
    frames of one chunk share a deadline. (The engine's clock is frozen at feed time, then moved on by
    ``behind_s`` before the frames are submitted; checked on the frames the feed makes computable.)"""
    from ditto.backends.base import StreamOptions
    from ditto.backends.talkinghead.stream import FILE_SLACK_S, LIVE_BUDGET_S

    engine = online_backend.models.engine
    render, deadlines, clock = engine.render, {}, FakeClock()
    clock.now = 1000.0

    def recording(work, *, deadline, expires=None):
        deadlines[work.index] = deadline
        return render(work, deadline=deadline, expires=expires)

    monkeypatch.setattr(engine, "render", recording)
    monkeypatch.setattr(engine, "_clock", clock)
    stream = online_backend.open_stream(avatar, seed=2, options=StreamOptions(live=live, total_frames=25))
    frames = stream.feed(speech_like(1.0))
    clock.now += behind_s
    during = list(frames)
    list(stream.finish())
    stream.close()
    assert sorted(deadlines) == list(range(25)) and len(during) >= 10
    due = np.array([deadlines[f.index] for f in during])
    if live:
        expected = np.full(len(during), 1000.0 + LIVE_BUDGET_S)
    elif behind_s:
        expected = np.full(len(during), clock.now + FILE_SLACK_S)
    else:
        expected = 1000.0 + (np.array([f.index for f in during]) + 1) / 25 + FILE_SLACK_S
    np.testing.assert_allclose(due, expected, atol=1e-9)


def upstream_blink_rows(n_frames: int, rng: random.Random, blink_len: int = 15) -> list[int]:
    """Upstream's blink rule with random gaps (delta_eye_open_n 0; docs/pipeline.md §3.3): draw the
    first gap, then the end guard, then one gap after each blink, all ``randint(60, 100)``; a blink
    is template rows 0..14; none starts within the last max(end guard, 15) frames."""
    rows = [0] * n_frames
    start, end_guard = rng.randint(60, 100), rng.randint(60, 100)
    while start < n_frames - max(end_guard, blink_len):
        rows[start : start + blink_len] = range(blink_len)
        start += blink_len + rng.randint(60, 100)
    return rows


@pytest.mark.parametrize("backend_name", ["fast_backend", "online_backend"])
def test_a_file_session_draws_the_blinks_for_its_length_as_upstream_run(request, avatar, backend_name) -> None:
    """Upstream setup() draws a 3000-frame schedule (N_d -1), then run() calls setup_Nd(num_f),
    which draws again for the clip from the same RNG; a live session keeps the first draw."""
    from ditto.backends.base import StreamOptions

    backend, seed, frames = request.getfixturevalue(backend_name), 5, 400
    rng = random.Random(seed)
    first_draw = upstream_blink_rows(3000, rng)
    for_the_clip = upstream_blink_rows(frames, rng)
    assert for_the_clip != first_draw[:frames]  # the redraw moves the blinks
    file_stream = backend.open_stream(avatar, seed=seed, options=StreamOptions(total_frames=frames))
    live_stream = backend.open_stream(avatar, seed=seed, options=StreamOptions(live=True))
    try:
        assert file_stream._state.stitcher.blink_rows == for_the_clip
        assert live_stream._state.stitcher.blink_rows == first_draw
    finally:
        file_stream.close()
        live_stream.close()


def test_same_seed_same_frames_other_seed_or_emo_differs(fast_backend, avatar) -> None:
    first = frames_of(fast_backend, avatar, 0.12, seed=7)
    again = frames_of(fast_backend, avatar, 0.12, seed=7)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    other_seed = frames_of(fast_backend, avatar, 0.12, seed=8)
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, other_seed, strict=True))
    happy = frames_of(fast_backend.with_options(emo=3), avatar, 0.12, seed=7)
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, happy, strict=True))


def test_concurrent_sessions_match_sequential_ones(fast_backend, avatar) -> None:
    """Sessions share the models but nothing mutable: two threads give what one thread gives."""
    sequential = {seed: frames_of(fast_backend, avatar, 0.12, seed=seed) for seed in (11, 12)}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        parallel = dict(
            zip((11, 12), pool.map(lambda seed: frames_of(fast_backend, avatar, 0.12, seed=seed), (11, 12)))
        )
    for seed, frames in sequential.items():
        assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, parallel[seed], strict=True))


def test_delta_pitch_turns_the_driven_keypoints(fast_backend, avatar) -> None:
    """overall_ctrl_info {'delta_pitch': d} adds d degrees of pitch to every driven frame:
    x_d rotates about the x axis (its x coordinates barely move), x_s is untouched."""
    plain, plain_warp, _ = recording(fast_backend, flag_stitching=False)
    tilted, tilted_warp, _ = recording(fast_backend, flag_stitching=False, overall_ctrl_info={"delta_pitch": 15})
    frames_of(plain, avatar, 0.08, seed=3)
    frames_of(tilted, avatar, 0.08, seed=3)
    assert plain_warp.rows("kp_source").shape[0] == 2
    for before, after in zip(plain_warp.rows("kp_source"), tilted_warp.rows("kp_source"), strict=True):
        torch.testing.assert_close(before, after)
    for before, after in zip(plain_warp.rows("kp_driving"), tilted_warp.rows("kp_driving"), strict=True):
        change = (after - before).abs()
        assert float(change[:, 1:].mean()) > 0.02  # y, z move
        assert float(change[:, 0].mean()) < 0.25 * float(change[:, 1:].mean())


def test_flag_stitching_false_skips_the_stitching_network(fast_backend, avatar) -> None:
    stitched, warp_on, stitch_on = recording(fast_backend)
    raw, warp_off, stitch_off = recording(fast_backend, flag_stitching=False)
    frames = frames_of(stitched, avatar, 0.08, seed=4)
    frames_of(raw, avatar, 0.08, seed=4)
    assert stitch_on.rows("kp_driving").shape[0] == len(frames) == 2 and stitch_off.calls == []
    assert not torch.equal(warp_on.rows("kp_driving")[0], warp_off.rows("kp_driving")[0])


def test_out_of_memory_frees_the_session_and_reports_it(fast_backend, avatar) -> None:
    class OutOfMemoryWarp(RecordingRunner):
        def __call__(self, **inputs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    models = dataclasses.replace(fast_backend.models, warp=OutOfMemoryWarp(fast_backend.models.warp))
    stream = DittoBackend(fast_backend.cfg, "cpu", models=models, setup_options=FAST_SETUP).open_stream(avatar, seed=0)
    list(stream.feed(speech_like(0.04)))
    with pytest.raises(BackendError) as info:
        list(stream.finish())
    assert info.value.code == ErrorCode.OUT_OF_MEMORY
    with pytest.raises(RuntimeError, match="closed"):
        stream.feed(speech_like(0.04))
    stream.close()  # twice is fine


def test_stream_call_order(fast_backend, avatar) -> None:
    stream = fast_backend.open_stream(avatar, seed=0)
    assert list(stream.finish()) == []  # no audio, no frames
    with pytest.raises(RuntimeError):
        stream.feed(speech_like(0.04))
    stream.close()
    stream.close()


# -- bad checkpoints --------------------------------------------------------------------------------


def _tree_copy(tree, tmp_path: Path) -> Path:
    """A ditto_pytorch folder of symlinks to the good files (replace one to break it)."""
    root = tmp_path / "ditto_pytorch"
    for src in tree.pytorch.rglob("*"):
        if src.is_file():
            dst = root / src.relative_to(tree.pytorch)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    return root


def _unlinked(path: Path) -> Path:
    """``path`` with its symlink removed, ready to receive a broken file."""
    path.unlink()
    return path


def _wrong_shapes(root: Path) -> None:
    path = root / "models" / "stitch_network.pth"
    obj = torch.load(path, weights_only=True)
    obj["retarget_shoulder"]["mlp.0.weight"] = torch.zeros(128, 100)
    torch.save(obj, _unlinked(path))


def _wrong_keys(root: Path) -> None:
    path = root / "models" / "appearance_extractor.pth"
    state = torch.load(path, weights_only=True)
    state["first.conv.kernel"] = state.pop("first.conv.weight")
    torch.save(state, _unlinked(path))


def _truncated_pth(root: Path) -> None:
    path = root / "models" / "stitch_network.pth"
    data = path.read_bytes()[:20000]
    _unlinked(path).write_bytes(data)


def _truncated_onnx(root: Path) -> None:
    path = root / "aux_models" / "det_10g.onnx"
    data = path.read_bytes()[:5000]
    _unlinked(path).write_bytes(data)


def _lmdm_without_model_state_dict(root: Path) -> None:
    path = root / "models" / "lmdm_v0.4_hubert.pth"
    torch.save({"state_dict": {"final_layer.weight": torch.zeros(265, 512)}}, _unlinked(path))


def _missing(root: Path) -> None:
    (root / "models" / "decoder.pth").unlink()


@pytest.mark.parametrize(
    "breakage,file_name,reason",
    [
        (_missing, "decoder.pth", "not found|missing|no such"),
        (_wrong_shapes, "stitch_network.pth", "size mismatch"),
        (_wrong_keys, "appearance_extractor.pth", "Missing key|Unexpected key"),
        (_truncated_pth, "stitch_network.pth", "cannot load"),
        (_truncated_onnx, "det_10g.onnx", "cannot load ONNX"),
        (_lmdm_without_model_state_dict, "lmdm_v0.4_hubert.pth", "model_state_dict"),
    ],
)
def test_bad_checkpoint_is_a_config_error_naming_the_file(
    checkpoint_tree, tmp_path, breakage, file_name, reason
) -> None:
    root = _tree_copy(checkpoint_tree, tmp_path)
    breakage(root)
    settings = Settings(data_root=root, cfg_pkl=checkpoint_tree.cfg_pkl("pytorch"), device="cpu")
    with pytest.raises(ConfigError, match=reason) as info:
        DittoBackend.from_settings(settings)
    assert file_name in str(info.value)


def test_a_pkl_that_is_not_a_ditto_cfg(checkpoint_tree, tmp_path) -> None:
    pkl = tmp_path / "cfg.pkl"
    pkl.write_bytes(pickle.dumps({"model": "something else"}))
    with pytest.raises(ConfigError, match="not a Ditto cfg pkl") as info:
        DittoBackend.from_settings(Settings(data_root=checkpoint_tree.pytorch, cfg_pkl=pkl, device="cpu"))
    assert str(pkl) in str(info.value)


# -- through the real server --------------------------------------------------------------------------


def _write_wav(path: Path, seconds: float) -> None:
    pcm = (speech_like(seconds) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm.tobytes())


def test_session_through_the_real_server(checkpoint_tree, tmp_path) -> None:
    """streaming_server.py on the PyTorch test tree (real renderer, the pkl's 50 DDIM steps)."""
    from ditto.client.connection import run_session

    wav = tmp_path / "speech.wav"
    _write_wav(wav, 0.2)
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "streaming_server.py",
            "--data_root",
            str(checkpoint_tree.pytorch),
            "--cfg_pkl",
            str(checkpoint_tree.cfg_pkl("pytorch")),
            "--port",
            str(port),
            "--max_size",
            "256",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_healthy(port, proc, timeout_s=180)["backend"] == "ditto"
        result = asyncio.run(
            run_session(f"ws://127.0.0.1:{port}", "ditto-test", str(wav), str(EXAMPLE_IMAGE), timeout_s=400, seed=5)
        )
        assert result.ok, (result.error, (tmp_path / "server.log").read_text()[-3000:])
        assert result.metadata.total_frames == 5 and (result.metadata.width, result.metadata.height) == (256, 256)
        assert [f.index for f in result.frames] == list(range(5))
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_server_with_a_broken_pkl_exits_with_one_line(checkpoint_tree, tmp_path) -> None:
    pkl = tmp_path / "broken.pkl"
    pkl.write_bytes(b"\x80\x04this is not a cfg")
    out = subprocess.run(
        [
            sys.executable,
            "streaming_server.py",
            "--data_root",
            str(checkpoint_tree.pytorch),
            "--cfg_pkl",
            str(pkl),
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("streaming_server.py: error:") and str(pkl) in lines[0]


# -- GPU ------------------------------------------------------------------------------------------------


def cuda_settings(checkpoint_tree) -> Settings:
    """The PyTorch flavour on CUDA; without mediapipe (GPU images often lack it) the 478-point mesh
    comes from the tree's ONNX blaze_face + face_mesh stand-ins instead of the ``.task`` bundle."""
    pkl = checkpoint_tree.cfg_pkl("pytorch")
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        cfg = read_cfg_dict(pkl)
        cfg["base_cfg"]["landmark478_cfg"] = {
            "blaze_face_model_path": str(checkpoint_tree.onnx / "blaze_face.onnx"),
            "face_mesh_model_path": str(checkpoint_tree.onnx / "face_mesh.onnx"),
            "task_path": "",
            "device": "cuda",
            "force_ori_type": False,
        }
        pkl = dump_cfg_pkl(checkpoint_tree.cfg / "pytorch_onnx_mesh_cfg.pkl", cfg)
    return Settings(data_root=checkpoint_tree.pytorch, cfg_pkl=pkl, device="cuda", compile_min_batch=0)


@pytest.mark.gpu
@cuda
def test_cuda_session_renders_on_the_device(checkpoint_tree, portrait) -> None:
    """Real models on CUDA (fp16 renderer, LMDM as a CUDA graph): offline and online clips of 0.2 s."""
    backend = DittoBackend.from_settings(cuda_settings(checkpoint_tree))
    try:
        assert backend.models.renderer.captured == backend.models.batch_sizes
        assert backend.models.engine.sampler.use_graph
        avatar = backend.register_source(portrait)
        assert avatar.source.frames[0].f_s.is_cuda and avatar.paste_plans[0].index.is_cuda
        for variant in (backend, backend.with_options(online_mode=True, overlap_v2=75, sampling_timesteps=10)):
            frames = frames_of(variant, avatar, 0.2, seed=1)
            assert [f.index for f in frames] == list(range(5))
            assert all(f.image.dtype == np.uint8 and f.image.shape == (512, 512, 3) for f in frames)
        first, again = (frames_of(backend, avatar, 0.2, seed=1) for _ in range(2))
        for a, b in zip(first, again, strict=True):  # same seed: same frames (up to GPU rounding)
            assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    finally:
        backend.close()


@pytest.mark.gpu
@cuda
def test_cuda_graphs_give_the_eager_frames(checkpoint_tree, portrait) -> None:
    """The shared LMDM and warp+decode graphs compute what the eager calls compute."""
    backend = DittoBackend.from_settings(cuda_settings(checkpoint_tree)).with_options(sampling_timesteps=5)
    try:
        avatar = backend.register_source(portrait)
        graphed = frames_of(backend, avatar, 3.0, seed=3)  # 75 frames: two LMDM windows
        eager_models = dataclasses.replace(backend.models)
        eager_models.renderer.use_graph = False
        eager_models.engine.sampler.use_graph = False
        eager = DittoBackend(backend.cfg, "cuda", models=eager_models, setup_options={"sampling_timesteps": 5})
        plain = frames_of(eager, avatar, 3.0, seed=3)
        assert [f.index for f in graphed] == [f.index for f in plain] == list(range(75))
        worst = max(np.abs(a.image.astype(int) - b.image.astype(int)).max() for a, b in zip(graphed, plain))
        assert worst <= 2
    finally:
        backend.close()


@pytest.mark.gpu
@cuda
def test_cuda_sessions_in_threads_share_the_graphs(checkpoint_tree, portrait) -> None:
    """Two online sessions at once on CUDA share the engine's batches; each gets its own frames
    (batched with the other session's or alone: equal within fp16 rounding)."""
    base = DittoBackend.from_settings(cuda_settings(checkpoint_tree))
    try:
        backend = base.with_options(online_mode=True, overlap_v2=75, sampling_timesteps=10)
        avatar = backend.register_source(portrait)
        alone = {seed: frames_of(backend, avatar, 0.6, seed=seed) for seed in (1, 2)}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda seed: frames_of(backend, avatar, 0.6, seed=seed), (1, 2)))
        assert [len(frames) for frames in results] == [15, 15]
        for seed, frames in zip((1, 2), results):
            worst = max(np.abs(a.image.astype(int) - b.image.astype(int)).max() for a, b in zip(frames, alone[seed]))
            assert worst <= 3
    finally:
        base.close()
