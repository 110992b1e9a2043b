"""The device engine: batching across sessions, deadline order, shedding, fault isolation, shutdown.

Batches are forced with ``engine.paused()`` (work submitted inside waits, then runs as one
batch), so nothing here depends on thread timing. On the CPU a batched result must equal
the same work alone exactly; on CUDA (``gpu`` marker) within fp16 tolerance.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import math
import threading

import numpy as np
import pytest
import torch

from ditto.backends.talkinghead.backend import DittoBackend
from ditto.backends.talkinghead.engine import DeviceEngine, RenderWork, Stage, WindowWork, hold_seconds
from ditto.errors import BackendError, ErrorCode
from tests.backends.talkinghead.conftest import RecordingRunner, render_all, speech_like
from tests.conftest import FakeClock


def engine_like(backend: DittoBackend, clock=None) -> DeviceEngine:
    """A second engine over ``backend``'s models (so that a test can pause it and own its clock), with one
    lane for every stage, where the order of batches is the deadline order (with a motion lane, a HuBERT
    window runs beside a frame whatever their deadlines)."""
    return backend.models.make_engine(motion_stream=False, **({"clock": clock} if clock else {}))


def render_works(backend: DittoBackend, avatar, n: int, seed: int = 0) -> list[RenderWork]:
    gen = torch.Generator().manual_seed(seed)
    frame = avatar.source.frames[0]
    return [
        RenderWork(
            index=i,
            f_s=frame.f_s,
            x_s=torch.randn((1, 21, 3), generator=gen) * 0.1,
            x_d=torch.randn((1, 21, 3), generator=gen) * 0.1,
            stitch=i % 2 == 0,
            plan=avatar.paste_plans[0],
            jpeg_quality=None,
        )
        for i in range(n)
    ]


def window_works(backend: DittoBackend, n: int, steps: int = 3) -> list[WindowWork]:
    a2m = backend.cfg.audio2motion
    gen = torch.Generator().manual_seed(5)
    shape = (1, a2m.seq_frames, a2m.motion_feat_dim)
    return [
        WindowWork(
            steps=steps,
            kp_cond=torch.randn((1, a2m.motion_feat_dim), generator=gen) * 0.1,
            cond=torch.randn((1, a2m.seq_frames, a2m.audio_feat_dim), generator=gen),
            x_T=torch.randn(shape, generator=gen),
            noise=torch.randn((steps - 1, *shape), generator=gen),
        )
        for _ in range(n)
    ]


def run_batched(engine: DeviceEngine, submit, works) -> list:
    with engine.paused():
        futures = [submit(work) for work in works]
    return [future.result(timeout=120) for future in futures]


@pytest.fixture(scope="module")
def engine(fast_backend):
    engine = engine_like(fast_backend)
    yield engine
    engine.close()


def test_a_batch_of_frames_equals_each_frame_alone_exactly_on_cpu(engine, fast_backend, avatar) -> None:
    works = render_works(fast_backend, avatar, 5)
    before = engine.stats[Stage.RENDER].batches
    batched = run_batched(engine, lambda w: engine.render(w, deadline=0.0), works)
    assert engine.stats[Stage.RENDER].batches == before + 1 and engine.stats[Stage.RENDER].last_batch == 5
    for work, frame in zip(works, batched, strict=True):
        alone = engine.render(work, deadline=0.0).result(timeout=60)
        assert frame.index == work.index
        np.testing.assert_array_equal(frame.image, alone.image)


def test_the_stitching_network_runs_on_the_rows_that_ask_for_it(fast_backend, avatar) -> None:
    recorder = RecordingRunner(fast_backend.models.stitch)
    models = dataclasses.replace(fast_backend.models, stitch=recorder)
    try:
        works = render_works(fast_backend, avatar, 5)  # rows 0, 2, 4 ask for stitching
        run_batched(models.engine, lambda w: models.engine.render(w, deadline=0.0), works)
        torch.testing.assert_close(recorder.rows("kp_driving"), torch.cat([works[i].x_d for i in (0, 2, 4)]))
    finally:
        models.engine.close()


def test_a_batch_of_lmdm_windows_equals_each_window_alone_exactly_on_cpu(engine, fast_backend) -> None:
    works = window_works(fast_backend, 3)
    batched = run_batched(engine, lambda w: engine.sample(w, deadline=0.0), works)
    assert engine.stats[Stage.LMDM].last_batch == 3
    for work, motion in zip(works, batched, strict=True):
        torch.testing.assert_close(motion, engine.sample(work, deadline=0.0).result(timeout=60), rtol=0, atol=0)
    assert not torch.equal(batched[0], batched[1])  # each row kept its own noise


def test_a_batch_of_hubert_windows_equals_each_alone(engine) -> None:
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal(6480).astype(np.float32) * 0.1 for _ in range(3)]
    batched = run_batched(engine, lambda w: engine.features(w, deadline=0.0), windows)
    assert engine.stats[Stage.HUBERT].last_batch == 3
    for window, features in zip(windows, batched, strict=True):
        assert features.shape == (5, 1024)
        torch.testing.assert_close(features, engine.features(window, deadline=0.0).result(timeout=60), rtol=0, atol=0)


def test_with_a_motion_stream_windows_run_beside_a_render_batch_in_flight(fast_backend, avatar) -> None:
    """HuBERT and LMDM then have launch slots of their own: with one slot per lane, a window is
    computed and resolved while the render lane's only slot is held by a batch still being resolved."""
    with contextlib.closing(fast_backend.models.make_engine(launched_batches=1, motion_stream=True)) as engine:
        resolving, release = threading.Event(), threading.Event()
        launch = engine._launch

        def launched(stage, works, size):
            finish = launch(stage, works, size)
            if stage is not Stage.RENDER:
                return finish

            def held():
                resolving.set()
                assert release.wait(60)
                return finish()

            return held

        engine._launch = launched
        frame = engine.render(render_works(fast_backend, avatar, 1)[0], deadline=0.0)
        assert resolving.wait(60)
        features = engine.features(speech_like(6480 / 16000, seed=1), deadline=0.0).result(timeout=60)
        motion = engine.sample(window_works(fast_backend, 1)[0], deadline=0.0).result(timeout=60)
        assert not frame.done()
        release.set()
        assert frame.result(timeout=60).index == 0
        assert features.shape == (5, 1024) and motion.shape == (80, 265)


def test_sessions_rendered_together_equal_each_session_alone(fast_backend, avatar) -> None:
    """Two whole sessions whose work the engine batches give what each gives alone."""
    audio = speech_like(0.2)
    alone = {seed: sum(render_all(fast_backend.open_stream(avatar, seed=seed), audio), []) for seed in (1, 2)}
    batches_before = fast_backend.models.engine.stats[Stage.RENDER].batches
    items_before = fast_backend.models.engine.stats[Stage.RENDER].items
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        together = dict(
            zip(
                (1, 2),
                pool.map(lambda seed: sum(render_all(fast_backend.open_stream(avatar, seed=seed), audio), []), (1, 2)),
            )
        )
    stats = fast_backend.models.engine.stats[Stage.RENDER]
    assert stats.items - items_before == 10 and stats.batches - batches_before < 10  # some frames batched
    for seed in (1, 2):
        assert [f.index for f in together[seed]] == list(range(5))
        for a, b in zip(alone[seed], together[seed], strict=True):
            np.testing.assert_array_equal(a.image, b.image)


def test_earliest_deadline_runs_first(fast_backend, avatar) -> None:
    order: list[str] = []
    with contextlib.closing(engine_like(fast_backend)) as engine:
        with engine.paused():
            late = engine.features(np.zeros(6480, np.float32), deadline=5.0)  # file-mode work
            early = engine.render(render_works(fast_backend, avatar, 1)[0], deadline=1.0)  # a live frame
            late.add_done_callback(lambda _: order.append("hubert"))
            early.add_done_callback(lambda _: order.append("render"))
        late.result(timeout=60), early.result(timeout=60)
        assert order == ["render", "hubert"]


def test_frames_past_their_lag_bound_are_shed_not_rendered(fast_backend, avatar) -> None:
    clock = FakeClock()
    with contextlib.closing(engine_like(fast_backend, clock)) as engine:
        works = render_works(fast_backend, avatar, 3)
        with engine.paused():
            futures = [
                engine.render(works[0], deadline=0.0, expires=clock.now - 0.1),  # waited too long
                engine.render(works[1], deadline=0.0, expires=clock.now + 10),
                engine.render(works[2], deadline=0.0),
            ]  # never shed (a last frame)
        results = [f.result(timeout=60) for f in futures]
        assert results[0] is None and results[1].index == 1 and results[2].index == 2
        assert engine.shed == 1 and engine.stats[Stage.RENDER].items == 2


def test_a_failing_item_fails_only_its_session_and_the_engine_keeps_serving(fast_backend, avatar) -> None:
    with contextlib.closing(engine_like(fast_backend)) as engine:
        good = render_works(fast_backend, avatar, 2)
        bad = dataclasses.replace(good[0], index=9, f_s=torch.zeros(1, 3))  # not an appearance volume
        with engine.paused():
            futures = [
                engine.render(good[0], deadline=0.0),
                engine.render(bad, deadline=0.0),
                engine.render(good[1], deadline=0.0),
            ]
        assert futures[0].result(timeout=60).index == 0 and futures[2].result(timeout=60).index == 1
        with pytest.raises(RuntimeError):
            futures[1].result(timeout=60)
        assert engine.stats[Stage.RENDER].failures >= 1
        assert engine.render(good[1], deadline=0.0).result(timeout=60).index == 1


def failing_when_resolved(engine: DeviceEngine, fails, before_raising=None) -> None:
    """Make the engine's launched render batches fail when they are resolved (where CUDA's
    device→host copies and JPEG encoding go wrong) whenever ``fails(works)``; the stage runs for real."""
    launch = engine._launch

    def launched(stage, works, size):
        finish = launch(stage, works, size)
        if stage is not Stage.RENDER or not fails(works):
            return finish

        def failing():
            if before_raising is not None:
                before_raising()
            raise RuntimeError("the batch went wrong after its launch")

        return failing

    engine._launch = launched


def test_a_batch_failing_after_its_launch_is_run_again_item_by_item(fast_backend, avatar) -> None:
    with contextlib.closing(engine_like(fast_backend)) as engine:
        good = render_works(fast_backend, avatar, 3)
        failing_when_resolved(engine, lambda works: any(w.index == 1 for w in works))
        with engine.paused():
            futures = [engine.render(work, deadline=0.0) for work in good]
        assert futures[0].result(timeout=60).index == 0 and futures[2].result(timeout=60).index == 2
        with pytest.raises(RuntimeError, match="after its launch"):
            futures[1].result(timeout=60)
        assert engine.stats[Stage.RENDER].failures == 2  # the batch, then the item alone
        assert engine.render(good[2], deadline=0.0).result(timeout=60).index == 2


def test_a_batch_failing_after_close_fails_its_items_with_shutting_down(fast_backend, avatar) -> None:
    """Close while a batch is being resolved: nobody would run its items again, so they must not hang."""
    engine = engine_like(fast_backend)
    resolving, go_on = threading.Event(), threading.Event()

    def wait_for_close() -> None:
        resolving.set()
        assert go_on.wait(60)

    failing_when_resolved(engine, lambda works: len(works) > 1, before_raising=wait_for_close)
    with engine.paused():
        futures = [engine.render(work, deadline=0.0) for work in render_works(fast_backend, avatar, 2)]
    assert resolving.wait(60)
    closer = threading.Thread(target=engine.close)
    closer.start()
    engine._thread.join(60)  # the engine thread has seen the close and stopped
    go_on.set()
    closer.join(60)
    assert not closer.is_alive()
    for future in futures:
        with pytest.raises(BackendError) as info:
            future.result(timeout=10)
        assert info.value.code == ErrorCode.SHUTTING_DOWN


def test_out_of_memory_in_a_batch_becomes_a_structured_error(fast_backend, avatar) -> None:
    class OutOfMemoryOnce:
        def __init__(self, runner) -> None:
            self.runner, self.input_names, self.output_names, self.device = (
                runner,
                runner.input_names,
                runner.output_names,
                runner.device,
            )

        def __call__(self, **inputs):
            if float(inputs["kp_driving"].abs().sum()) > 1e3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.runner(**inputs)

    models = dataclasses.replace(fast_backend.models, stitch=OutOfMemoryOnce(fast_backend.models.stitch))
    models.engine.close()  # the one replace() built; this test drives its own
    with contextlib.closing(models.make_engine()) as engine:
        ok, huge = render_works(fast_backend, avatar, 2)
        huge = dataclasses.replace(huge, x_d=torch.full((1, 21, 3), 100.0), stitch=True)
        ok = dataclasses.replace(ok, stitch=True)
        with engine.paused():
            futures = [engine.render(ok, deadline=0.0), engine.render(huge, deadline=0.0)]
        assert futures[0].result(timeout=60).index == 0
        with pytest.raises(BackendError) as info:
            futures[1].result(timeout=60)
        assert info.value.code == ErrorCode.OUT_OF_MEMORY


def test_a_session_that_leaves_drops_its_queued_work(fast_backend, avatar) -> None:
    with contextlib.closing(engine_like(fast_backend)) as engine:
        works = render_works(fast_backend, avatar, 3)
        with engine.paused():
            futures = [engine.render(w, deadline=0.0) for w in works]
            futures[1].cancel()
        assert futures[0].result(timeout=60).index == 0 and futures[2].result(timeout=60).index == 2
        assert futures[1].cancelled() and engine.stats[Stage.RENDER].items == 2


def test_close_fails_pending_work_with_shutting_down(fast_backend, avatar) -> None:
    engine = engine_like(fast_backend)
    with engine.paused():
        future = engine.render(render_works(fast_backend, avatar, 1)[0], deadline=0.0)
        engine.close()
    with pytest.raises(BackendError) as info:
        future.result(timeout=10)
    assert info.value.code == ErrorCode.SHUTTING_DOWN
    with pytest.raises(BackendError):
        engine.render(render_works(fast_backend, avatar, 1)[0], deadline=0.0)


def test_stage_stats_report_batches(fast_backend, avatar) -> None:
    list(render_all(fast_backend.open_stream(avatar, seed=0), speech_like(0.12)))
    stats = fast_backend.stage_stats()
    assert set(stats) == {"hubert", "lmdm", "render"}
    assert stats["render"].items >= 3 and stats["render"].mean_batch >= 1 and stats["render"].queued == 0
    assert stats["render"].launch_s > 0


# seconds per batch at each graph size: the render stage as measured on an H200 (compiled from 8 on)
RENDER_COSTS = {1: 0.0114, 2: 0.0184, 4: 0.0329, 8: 0.0286, 12: 0.0421, 16: 0.0570}


@pytest.mark.parametrize(
    ("waiting", "plan"),
    [
        (1, (1, 1)),
        (3, (2, 2)),
        (5, (5, 8)),  # padded to the compiled size 8 rather than split at the plain size 4
        (8, (8, 8)),
        (13, (12, 12)),  # 12 now, one left for the next batch, rather than 13 padded to 16
        (16, (12, 12)),  # 12 costs a little less per frame than 16
        (40, (12, 12)),
    ],
)
def test_measured_costs_plan_the_batch(engine, waiting, plan) -> None:
    engine.batch_costs = {Stage.RENDER: RENDER_COSTS}
    try:
        assert engine.plan_batch(Stage.RENDER, waiting) == plan
        assert engine.cost_per_item(Stage.RENDER, waiting) == pytest.approx(RENDER_COSTS[plan[1]] / plan[0])
        assert engine.plan_batch(Stage.LMDM, waiting) == (min(waiting, 16), None)  # not measured: all, next size
    finally:
        engine.batch_costs = {}


def test_the_engine_takes_the_planned_batches(fast_backend, avatar) -> None:
    engine = engine_like(fast_backend)
    try:
        engine.batch_costs = {Stage.RENDER: RENDER_COSTS}
        frames = run_batched(engine, lambda w: engine.render(w, deadline=0.0), render_works(fast_backend, avatar, 13))
        assert [f.index for f in frames] == list(range(13))
        stats = engine.stats[Stage.RENDER]
        assert (stats.batches, stats.items, stats.last_batch) == (2, 13, 1)  # 12, then the one left
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("waiting", "lane_free_in", "hold"),
    [
        (3, 0.030, 0.025),  # the lane is busy for 30 ms: wait until 5 ms before it is free
        (3, 0.004, 0.0),  # due to be free within the lead: launch now, or the device idles
        (12, 0.030, 0.0),  # a full batch waits: launch it
        (3, -0.010, 0.0),  # the lane's work is late: launch now
    ],
)
def test_a_small_batch_waits_to_fill_only_while_its_lane_is_busy(waiting, lane_free_in, hold) -> None:
    assert hold_seconds(
        waiting=waiting, full=12, lane_free_in=lane_free_in, lead=0.005, expires_in=math.inf
    ) == pytest.approx(hold)


def test_a_batch_waits_to_fill_no_longer_than_its_first_lag_bound() -> None:
    """Launched a lead before the first frame's bound, so that frame is rendered, not shed."""
    assert hold_seconds(waiting=3, full=12, lane_free_in=0.030, lead=0.005, expires_in=0.010) == pytest.approx(0.005)
    assert hold_seconds(waiting=3, full=12, lane_free_in=0.030, lead=0.005, expires_in=0.004) == 0.0


def test_frames_arriving_while_the_lane_is_busy_join_one_batch(fast_backend, avatar) -> None:
    """With measured costs, frames that arrive one by one while a batch runs on the device wait for the
    batch size cheapest per frame (12 of RENDER_COSTS) instead of launching in small batches behind it."""
    engine = engine_like(fast_backend)
    try:
        running, release, second = threading.Event(), threading.Event(), threading.Event()
        # a lane busy for hours: the hold ends only when a full batch waits
        engine.batch_costs = {Stage.RENDER: {size: cost * 1e6 for size, cost in RENDER_COSTS.items()}}
        launches: list[int] = []
        launch, off_lane, hold_s = engine._launch, engine._off_lane, engine._hold_s

        def launched(stage, works, size):
            launches.append(len(works))
            if len(launches) == 2:
                second.set()
            return launch(stage, works, size)

        def on_device_until_released(batch):  # the first batch stays on the device (CPU: done at launch)
            if not running.is_set():
                running.set()
                assert release.wait(60)
            off_lane(batch)

        considered = threading.Event()

        def considering(stage):
            considered.set()
            return hold_s(stage)

        engine._launch, engine._off_lane, engine._hold_s = launched, on_device_until_released, considering
        works = render_works(fast_backend, avatar, 13)
        first = engine.render(works[0], deadline=0.0)
        assert running.wait(60)
        rest = []
        for work in works[1:]:  # one by one, each seen by the engine before the next arrives
            considered.clear()
            rest.append(engine.render(work, deadline=0.0))
            assert considered.wait(10), f"frame {work.index} was not considered: both launch slots are taken"
        assert second.wait(60) and launches == [1, 12]  # launched while the first is still on the device
        release.set()
        assert [f.result(timeout=60).index for f in [first, *rest]] == list(range(13))
    finally:
        release.set()
        engine.close()


def test_a_render_batch_does_not_wait_while_other_work_of_its_lane_waits(fast_backend, avatar) -> None:
    """On one shared lane a waiting HuBERT window would take the free slot ahead of the held frame and
    push the lane's free time out: the frame, due first, launches now instead."""
    engine = engine_like(fast_backend)  # one lane for every stage
    try:
        running, release, second = threading.Event(), threading.Event(), threading.Event()
        engine.batch_costs = {Stage.RENDER: {size: cost * 1e6 for size, cost in RENDER_COSTS.items()}}
        launches: list[tuple[Stage, int]] = []
        launch, off_lane = engine._launch, engine._off_lane

        def launched(stage, works, size):
            launches.append((stage, len(works)))
            if len(launches) == 2:
                second.set()
            return launch(stage, works, size)

        def on_device_until_released(batch):
            if not running.is_set():
                running.set()
                assert release.wait(60)
            off_lane(batch)

        engine._launch, engine._off_lane = launched, on_device_until_released
        works = render_works(fast_backend, avatar, 2)
        first = engine.render(works[0], deadline=0.0)
        assert running.wait(60)
        with engine.paused():
            frame = engine.render(works[1], deadline=0.0)
            features = engine.features(speech_like(6480 / 16000, seed=1), deadline=1.0)
        assert second.wait(60) and launches[1] == (Stage.RENDER, 1)
        release.set()
        assert first.result(timeout=60).index == 0 and frame.result(timeout=60).index == 1
        assert features.result(timeout=60).shape == (5, 1024)
    finally:
        release.set()
        engine.close()


def test_live_capacity_counts_the_motion_time_the_render_does_not_hide(fast_backend, monkeypatch) -> None:
    """With a motion stream, HuBERT and LMDM add only their measured unhidden share to the load."""
    engine = fast_backend.models.engine
    sizes = engine.batch_sizes
    costs = {
        Stage.RENDER: {b: 0.0035 * b for b in sizes},  # 3.5 ms a frame
        Stage.LMDM: {b: 0.02 + 0.002 * b for b in sizes},  # launch-bound: 20 ms a batch and more
        Stage.HUBERT: {b: 0.01 + 0.001 * b for b in sizes},
    }
    monkeypatch.setattr(engine, "batch_costs", costs)
    capacity = {share: fast_backend._live_capacity(share) for share in (1.0, 0.5, 0.0)}
    assert capacity[1.0] < capacity[0.5] < capacity[0.0]
    assert capacity[0.0] == 10  # the render alone: 87.5 ms of device time a second per session, 0.9 in all


def test_backend_without_capacity_measurement_on_cpu(fast_backend) -> None:
    assert fast_backend.live_capacity is None  # only measured on CUDA (warmup)


# -- CUDA -----------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def cuda_backend(checkpoint_tree):
    from ditto.backends.talkinghead.backend import DittoBackend
    from tests.backends.talkinghead.test_backend import cuda_settings

    backend = DittoBackend.from_settings(cuda_settings(checkpoint_tree))
    yield backend
    backend.close()


@pytest.mark.gpu
@cuda
def test_cuda_batches_equal_each_item_alone_within_fp16(cuda_backend, portrait) -> None:
    """5 frames (padded to the batch-8 graph) vs each through the batch-1 graph; 3 LMDM windows;
    and the JPEG encoded on the GPU decodes to the host image (within JPEG loss)."""
    import cv2

    avatar = cuda_backend.register_source(portrait)
    engine = cuda_backend.models.engine
    works = render_works(cuda_backend, avatar, 5)
    measured, engine.batch_costs = engine.batch_costs, {}  # all 5 in one batch, not as the costs plan it
    try:
        batched = run_batched(engine, lambda w: engine.render(w, deadline=0.0), works)
    finally:
        engine.batch_costs = measured
    assert engine.stats[Stage.RENDER].last_batch == 5
    for work, frame in zip(works, batched, strict=True):
        alone = engine.render(work, deadline=0.0).result(timeout=60)
        assert np.abs(frame.image.astype(int) - alone.image.astype(int)).max() <= 2
    windows = window_works(cuda_backend, 3, steps=cuda_backend.options.sampling_timesteps)
    motions = run_batched(engine, lambda w: engine.sample(w, deadline=0.0), windows)
    for work, motion in zip(windows, motions, strict=True):
        torch.testing.assert_close(motion, engine.sample(work, deadline=0.0).result(timeout=60), rtol=0, atol=2e-3)
    encoded = run_batched(
        engine, lambda w: engine.render(w, deadline=0.0), [dataclasses.replace(w, jpeg_quality=90) for w in works]
    )
    for frame, plain in zip(encoded, batched, strict=True):
        assert frame.image is None and frame.jpeg[:2] == b"\xff\xd8"
        decoded = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        mse = float(np.mean((decoded.astype(float) - plain.image.astype(float)) ** 2))
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30


@pytest.mark.gpu
@cuda
def test_cuda_batches_launched_back_to_back_each_equal_their_items_alone(cuda_backend, portrait) -> None:
    """40 frames and 20 HuBERT windows submitted at once run as several batches launched one behind
    the other (the next one's inputs are copied into the graphs' buffers while the last is still
    running or being resolved): every result is still its own item's."""
    avatar = cuda_backend.register_source(portrait)
    engine = cuda_backend.models.engine
    works = render_works(cuda_backend, avatar, 40, seed=3)
    batches_before = engine.stats[Stage.RENDER].batches
    batched = run_batched(engine, lambda w: engine.render(w, deadline=0.0), works)
    assert engine.stats[Stage.RENDER].batches - batches_before >= 3
    for work, frame in zip(works[::7], batched[::7], strict=True):
        alone = engine.render(work, deadline=0.0).result(timeout=60)
        assert np.abs(frame.image.astype(int) - alone.image.astype(int)).max() <= 2
    # the same frames JPEG-encoded on the GPU while the next batch renders: each decodes to its own image
    import cv2

    encoded = run_batched(
        engine, lambda w: engine.render(w, deadline=0.0), [dataclasses.replace(w, jpeg_quality=90) for w in works]
    )
    for frame, plain in zip(encoded[::7], batched[::7], strict=True):
        decoded = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        mse = float(np.mean((decoded.astype(float) - plain.image.astype(float)) ** 2))
        assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30
    windows = [speech_like(6480 / 16000, seed=k) for k in range(20)]
    features = run_batched(engine, lambda w: engine.features(w, deadline=0.0), windows)
    for window, feature in zip(windows[::6], features[::6], strict=True):
        torch.testing.assert_close(feature, engine.features(window, deadline=0.0).result(timeout=60), rtol=0, atol=2e-2)


@pytest.mark.gpu
@cuda
def test_cuda_motion_stream_batches_equal_the_engine_streams(cuda_backend, portrait) -> None:
    """Frames, HuBERT and LMDM windows submitted at once to an engine with a motion stream run
    concurrently on two streams: each result equals the same item run by the default engine."""
    avatar = cuda_backend.register_source(portrait)
    frames = render_works(cuda_backend, avatar, 24, seed=4)
    windows = [speech_like(6480 / 16000, seed=k) for k in range(12)]
    motion_works = window_works(cuda_backend, 6, steps=10)
    with contextlib.closing(cuda_backend.models.make_engine(motion_stream=True)) as engine:
        with engine.paused():
            futures = (
                [engine.render(w, deadline=0.0) for w in frames],
                [engine.features(w, deadline=0.0) for w in windows],
                [engine.sample(w, deadline=0.0) for w in motion_works],
            )
        rendered, features, motion = ([f.result(timeout=120) for f in group] for group in futures)
    default = cuda_backend.models.engine
    for work, frame in zip(frames[::5], rendered[::5], strict=True):
        alone = default.render(work, deadline=0.0).result(timeout=60)
        assert np.abs(frame.image.astype(int) - alone.image.astype(int)).max() <= 2
    for window, feature in zip(windows[::4], features[::4], strict=True):
        torch.testing.assert_close(
            feature, default.features(window, deadline=0.0).result(timeout=60), rtol=0, atol=2e-2
        )
    for work, rows in zip(motion_works[::2], motion[::2], strict=True):
        torch.testing.assert_close(rows, default.sample(work, deadline=0.0).result(timeout=60), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("motion_stream", [False, True])
def test_cuda_capacity_is_measured_at_warmup(checkpoint_tree, motion_stream) -> None:
    from tests.backends.talkinghead.test_backend import cuda_settings

    settings = cuda_settings(checkpoint_tree).model_copy(update={"motion_stream": motion_stream})
    base = DittoBackend.from_settings(settings)
    try:
        online = base.with_options(online_mode=True)
        online.warmup()
        assert online.models.engine.motion_stream is motion_stream
        assert online.live_capacity is not None and online.live_capacity >= 1
        costs = online.models.engine.batch_costs
        assert set(costs) == set(Stage) and all(set(c) == set(online.models.engine.batch_sizes) for c in costs.values())
    finally:
        base.close()


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv3d(110, 22, 3, padding=1),
        torch.nn.Conv3d(32, 4, 1),
        torch.nn.Conv2d(5, 1, 7, padding=3, bias=False),
    ],
)
def test_padding_conv_channels_to_multiples_of_8_keeps_the_result(conv) -> None:
    from ditto.backends.talkinghead.pipeline.render import pad_conv_channels

    model = torch.nn.Sequential(conv, torch.nn.ReLU())
    padded = pad_conv_channels(copy.deepcopy(model))
    inner = padded[0].conv
    assert inner.in_channels % 8 == 0 and inner.out_channels % 8 == 0
    x = torch.randn((2, conv.in_channels) + (6,) * (conv.weight.dim() - 2))
    with torch.inference_mode():
        torch.testing.assert_close(padded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (torch.nn.Conv3d(142, 22, 7, padding=3), (2, 142, 5, 9, 9)),  # the mask convolution's kind; depth < kernel
        (torch.nn.Conv3d(20, 32, 3, padding=1, bias=False), (3, 20, 4, 6, 6)),
        (torch.nn.Conv3d(8, 5, (3, 5, 5), padding=(1, 2, 2)), (1, 8, 7, 6, 6)),
    ],
)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_depth_tap_conv_computes_the_conv3d(conv, shape, memory_format) -> None:
    from ditto.backends.talkinghead.pipeline.render import DepthTapConv3d

    x = torch.randn(shape).contiguous(memory_format=memory_format)
    with torch.inference_mode():
        torch.testing.assert_close(DepthTapConv3d(conv)(x), conv(x), rtol=1e-4, atol=1e-4)


def test_only_narrow_stride_1_conv3d_become_depth_taps() -> None:
    from ditto.backends.talkinghead.models import WarpingNetwork
    from ditto.backends.talkinghead.pipeline.render import DepthTapConv3d, depth_tap_convs

    warp = depth_tap_convs(WarpingNetwork())
    tapped = {name for name, m in warp.named_modules() if isinstance(m, DepthTapConv3d)}
    assert tapped == {"dense_motion_network.mask", "dense_motion_network.hourglass.decoder.up_blocks.4.conv"}
    with pytest.raises(ValueError):
        DepthTapConv3d(torch.nn.Conv3d(4, 4, 3, stride=2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_renderer_matches_the_autocast_graphs() -> None:
    from ditto.backends.talkinghead.models import SPADEDecoder, WarpingNetwork
    from ditto.backends.talkinghead.pipeline.render import FrameRenderer
    from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner

    torch.manual_seed(0)
    device = torch.device("cuda")
    warp = TorchRunner(
        WarpingNetwork(), ("feature_3d", "kp_source", "kp_driving"), ("out",), device=device, autocast_fp16=True
    )
    decoder = TorchRunner(SPADEDecoder(), ("feature",), ("output",), device=device, autocast_fp16=True)
    f_s = [torch.randn(1, 32, 16, 64, 64, device=device) for _ in range(2)]
    x_s, x_d = (torch.randn(2, 21, 3, device=device) * 0.2 for _ in range(2))
    eager = FrameRenderer(warp, decoder, batch_sizes=(2,))(f_s, x_s, x_d).clone()
    compiled = FrameRenderer(warp, decoder, batch_sizes=(2,), compile_min_batch=2)(f_s, x_s, x_d)
    assert float((compiled - eager).abs().max()) < 0.02  # fp16 rounding of a (0, 1) image
