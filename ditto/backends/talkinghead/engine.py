"""The device engine: the one owner of the Ditto backend's device.

Every session submits its model work here and waits on a future; one engine thread
runs it, batching the pending work of all sessions (docs/pipeline.md §13: upstream runs each
stage one frame at a time per session, which leaves a GPU launch-bound)::

    sessions ── submit ──►  queue  ──► engine thread: pick the stage whose oldest deadline is
                                        nearest, take the planned batch of compatible items,
                                        launch it; a completion thread resolves their futures

Three stages, each batched across sessions:

* ``hubert``: 6480-sample windows → (5, 1024) features (host float32);
* ``lmdm``: one whole DDIM window per item (each with its own x_T and per-step noise) →
  (80, 265) motion (host float32); items batch when their step counts match;
* ``render``: keypoints → stitching network → warp → decode → paste-back → the frame, as a
  JPEG encoded on the GPU (nvjpeg) when the session asked for one and the device is CUDA,
  else the uint8 RGB image on the host. The one device→host copy per frame is its result.

How many items a batch takes, and the graph size it runs at, follow the stage's batch costs measured
at start-up (:meth:`DeviceEngine.measure_batch_costs`): the pair with the lowest device time per
item taken (13 frames waiting: 12 at size 12 rather than 13 padded to 16; 5 frames: padded to the
compiled size 8 rather than the plain size 4). Without measured costs a batch takes what waits,
padded to the next size.

Scheduling is earliest-deadline-first: a live session's frame is due when its audio is
(plus the session's budget); file sessions give their work a later deadline (a slack after it
was submitted, their frames not before their time at real-time pace), so it never outranks live
work submitted with it and, since deadlines are absolute times, never starves.
A batch that fails is retried item by item, so a fault (CUDA out of memory, say) fails only
the sessions it concerns; the engine keeps serving. Cancelled futures (a session that
left) are dropped before their batch runs.

The engine thread only *launches* a batch (on CUDA: host preparation, kernels and graph replays,
the device→host copies into pinned memory, all queued on its stream; on the CPU the work itself)
and hands it to a second thread, which waits for it, JPEG-encodes its frames on a stream of its
own (CUDA) and resolves the futures; meanwhile the engine thread prepares and launches the next
batch, so the device does not idle while the host works. At most :data:`LAUNCHED_BATCHES`
batches are in flight per lane. With measured costs a render batch smaller than the cheapest size per
item waits while its lane is busy, until just before the lane is due to be free or its first frame's lag
bound, and not while another stage of its lane waits (:func:`hold_seconds`): at live load frames arrive
a few at a time, and launched at once they would run in small batches, which cost more device time per
frame, behind work already queued. Frames past their lag bound are shed
before a batch is planned, so shedding does not shrink the batch.

With ``motion_stream`` (CUDA), HuBERT and LMDM batches go to a second stream, of higher priority,
with launch slots and a completion thread of their own: at live batch sizes they are chains of small
kernels that leave most of the device idle, and there they run beside the render batches instead of
between them. A stage's busy time (``stats``) is then the span of its batches on its stream, which
the other lane's work shares: the stages' times overlap. Batch costs are measured one stage at a
time; how much of the motion time the render hides is timed apart (:meth:`DeviceEngine.time_together`).

Sessions hold only host tensors and their own state; nothing but the engine's threads touches the
device (on CUDA on streams of their own).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import enum
import importlib.util
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto.backends.base import StageStats, VideoFrame
from ditto.backends.talkinghead.aux_models.hubert import HubertFeatureExtractor, window_features
from ditto.backends.talkinghead.pipeline.putback import PastePlan, paste_back_many
from ditto.backends.talkinghead.pipeline.render import FrameRenderer
from ditto.backends.talkinghead.pipeline.sampler import BatchedWindowSampler
from ditto.backends.talkinghead.runtime.base import (
    DEFAULT_BATCH_SIZES,
    ModelRunner,
    batch_sizes_up_to,
    padded_batch_size,
)
from ditto.backends.talkinghead.runtime.cuda_graphs import MOTION_PRIORITY, capture_graph
from ditto.errors import BackendError, ErrorCode, is_out_of_memory

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_SIZES", "DeviceEngine", "batch_sizes_up_to", "RenderWork", "Stage", "WindowWork"]

LAUNCHED_BATCHES = 2
"""Batches launched and not yet resolved (per lane): one running on the device, one queued behind it."""

LAUNCH_LEAD = 2.0
"""A held batch is launched this many times its stage's host launch time before its lane is due to be free."""


def hold_seconds(*, waiting: int, full: int, lane_free_in: float, lead: float, expires_in: float) -> float:
    """How long a batch of ``waiting`` items should wait for more to arrive (0: launch it now).

    It waits only while its lane is busy anyway (``lane_free_in`` seconds of launched work left), and
    until ``lead`` seconds before the lane is due to be free: launched now it would only queue behind
    that work, so waiting does not delay when its items start (they end later by what the items that
    join cost), and what arrives meanwhile joins it instead of running in a later batch. It does not
    wait once ``full`` items (the size cheapest per item) wait, nor until ``expires_in`` (the earliest
    of its items' lag bounds: a frame held past it would be shed), again launching ``lead`` before.
    """
    hold = min(lane_free_in, expires_in) - lead  # launched by then, the first frame is rendered
    return 0.0 if waiting >= full or hold <= 0 else hold


class Stage(str, enum.Enum):
    HUBERT = "hubert"
    LMDM = "lmdm"
    RENDER = "render"


FILLING_STAGES = frozenset({Stage.RENDER})
"""Stages whose batches wait to fill (:func:`hold_seconds`): a session submits its frames ahead and
keeps working, but waits for its HuBERT and LMDM results (what it submits next depends on them), so
holding those stalls the sessions behind them (on the H200, with every stage waiting on one shared
lane, live 8 sessions fell from 186 to 26 FPS; measured while the sessions' stitching in torch held the
GIL, README session 7, so to be measured again)."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class WindowWork:
    """One LMDM window of one session (host tensors; batch axis 1)."""

    steps: int
    kp_cond: Tensor  # (1,265) motion of the frame before the window
    cond: Tensor  # (1,80,C) per-frame condition
    x_T: Tensor  # (1,80,265) the window's starting noise
    noise: Tensor  # (S-1,1,80,265) the session's per-step noise


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class RenderWork:
    """One frame of one session: keypoints on the host, the avatar's tensors on the device."""

    index: int
    f_s: Tensor  # (1,32,16,64,64) the avatar's appearance volume (device)
    x_s: Tensor  # (1,21,3) source keypoints (host)
    x_d: Tensor  # (1,21,3) driven keypoints, before the stitching network (host)
    stitch: bool  # run the stitching network on x_d
    plan: PastePlan  # paste-back into the source frame (device)
    jpeg_quality: int | None  # encode on the device (CUDA) at this quality; None: return the image


@dataclasses.dataclass(eq=False)
class _Request:
    stage: Stage
    key: Any  # items of one batch share it
    work: Any
    deadline: float
    future: concurrent.futures.Future
    expires: float | None = None  # past this the result is None (shed) instead of computed


Finish = Callable[[], list[Any]]
"""Waits for a launched batch and returns its results (runs on the completion thread)."""


class _Lane(enum.Enum):
    """Stages of one lane share its launch slots, its stream and its completion thread."""

    RENDER = "render"
    MOTION = "motion"  # HuBERT and LMDM, with ``motion_stream``


@dataclasses.dataclass(frozen=True, slots=True)
class _Taken:
    """A batch taken from the queue (it holds a launch slot of its stage's lane): its items (none left
    when every one was cancelled), the graph size to run them at (None: the next size up),
    and whether it is an item of a failed batch run again alone."""

    stage: Stage
    batch: list[_Request]
    size: int | None = None
    alone: bool = False


@dataclasses.dataclass(eq=False)
class _Launched:
    stage: Stage
    batch: list[_Request]
    finish: Finish
    started: float  # perf_counter at launch
    span: tuple[torch.cuda.Event, torch.cuda.Event] | None  # device time of the batch (CUDA)
    cost: float = 0.0  # its measured device seconds (0: not measured)


class DeviceEngine:
    """Runs every session's HuBERT, LMDM and render work on ``device``, batched.

    Args:
        hubert: the HuBERT extractor (its runner decides where it runs).
        lmdm: the LMDM runner.
        stitch: the stitching network runner.
        renderer: warp + decode (batched; CUDA graphs per batch size on CUDA).
        device: the device the renderer and LMDM live on.
        batch_sizes: the batch sizes graphs are captured for; larger batches are split,
            smaller ones padded to the next size.
        launched_batches: batches launched and not yet resolved at once, per lane (1: the engine
            thread waits for each batch's results before it launches the next).
        motion_stream: run HuBERT and LMDM on a stream of their own, beside the render (CUDA;
            on the CPU only their launch slots are their own).
        clock: monotonic seconds (injected by tests).

    Call :meth:`close` to stop the thread; futures still pending then fail with
    ``shutting_down``.
    """

    def __init__(
        self,
        *,
        hubert: HubertFeatureExtractor,
        lmdm: ModelRunner,
        stitch: ModelRunner,
        renderer: FrameRenderer,
        device: torch.device,
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        launched_batches: int = LAUNCHED_BATCHES,
        motion_stream: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = torch.device(device)
        self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
        self.max_batch = self.batch_sizes[-1]
        self._hubert = hubert
        self._stitch = stitch
        self._renderer = renderer
        # the motion stream's graphs are captured apart from the render's: they replay at the same time
        motion_priority = MOTION_PRIORITY if motion_stream else 0
        self.sampler = BatchedWindowSampler(
            lmdm, device=self.device, batch_sizes=self.batch_sizes, capture_priority=motion_priority
        )
        self._clock = clock
        self.stats = {stage: StageStats() for stage in Stage}
        self.shed = 0  # frames past their session's lag bound, not rendered
        self._pending: dict[Stage, list[_Request]] = {stage: [] for stage in Stage}
        self._cv = threading.Condition()
        self._closing = False
        self._pauses = 0  # paused() blocks
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            # the fp32 networks (LMDM, HuBERT, stitching) multiply on tensor cores in TF32, as the official
            # fp32 TensorRT engines do (TensorRT enables TF32 by default); cuDNN convolutions already do
            torch.backends.cuda.matmul.allow_tf32 = True
        self._stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        # a stage's lane: its launch slots and its stream (None: the engine stream)
        self._lane = {
            stage: _Lane.MOTION if motion_stream and stage != Stage.RENDER else _Lane.RENDER for stage in Stage
        }
        self._lane_streams = {
            _Lane.RENDER: None,
            _Lane.MOTION: torch.cuda.Stream(device=self.device, priority=motion_priority)
            if self._cuda and motion_stream
            else None,
        }
        # nvjpeg comes with torchvision; without it frames go to the host and the server encodes them
        self._nvjpeg = self._cuda and importlib.util.find_spec("torchvision") is not None
        self._jpeg_stream = torch.cuda.Stream(device=self.device) if self._nvjpeg else None
        module = getattr(hubert, "module", None)
        self._hubert_graphs = (
            _HubertGraphs(module, hubert.autocast_fp16, self.batch_sizes, capture_priority=motion_priority)
            if self._cuda and module is not None
            else None
        )
        self.idle_s = 0.0  # engine thread time spent waiting for work
        self.batch_costs: dict[Stage, dict[int, float]] = {}  # seconds per batch at each graph size
        self._retries: list[_Request] = []  # items of a batch that failed after launch: run again one by one
        self._slots = max(1, int(launched_batches))  # per lane
        self._in_flight = {lane: 0 for lane in _Lane}  # launched and not yet resolved, per lane (under _cv)
        # each lane's batches on the device (launched, not yet done there), and when the lane is due to be
        # free (perf_counter): a lane runs its batches one after another
        self._on_lane: dict[_Lane, list[_Launched]] = {lane: [] for lane in _Lane}
        self._lane_free_at = {lane: 0.0 for lane in _Lane}
        self._launch_s = {stage: 0.0 for stage in Stage}  # host seconds a launch takes (moving average)
        lanes = dict.fromkeys(self._lane.values())
        self._launched: dict[_Lane, queue.SimpleQueue[_Launched | None]] = {lane: queue.SimpleQueue() for lane in lanes}
        self._completers = [
            threading.Thread(
                target=self._complete, args=(lane,), name=f"ditto-engine-{lane.value}-results", daemon=True
            )
            for lane in lanes
        ]
        self._thread = threading.Thread(target=self._run, name="ditto-engine", daemon=True)
        for completer in self._completers:
            completer.start()
        self._thread.start()

    # -- submitting (any thread) ------------------------------------------------------------

    def features(self, window: np.ndarray, *, deadline: float) -> concurrent.futures.Future:
        """One HuBERT window (6480 float32 samples) → future of (5, 1024) host float32 features."""
        return self._submit(Stage.HUBERT, None, np.asarray(window, np.float32), deadline)

    def sample(self, work: WindowWork, *, deadline: float) -> concurrent.futures.Future:
        """One LMDM window → future of its (80, 265) host float32 motion."""
        return self._submit(Stage.LMDM, work.steps, work, deadline)

    def render(self, work: RenderWork, *, deadline: float, expires: float | None = None) -> concurrent.futures.Future:
        """One frame → future of its :class:`VideoFrame` (``jpeg`` set when the work asked for it),
        or of None when the engine reached it only after ``expires`` (shed, not rendered)."""
        return self._submit(Stage.RENDER, None, work, deadline, expires)

    @property
    def chunksize(self) -> tuple[int, int, int]:
        """HuBERT's (past, current, future) frames per window."""
        return self._hubert.chunksize

    def now(self) -> float:
        return self._clock()

    def _submit(
        self, stage: Stage, key: Any, work: Any, deadline: float, expires: float | None = None
    ) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._closing:
                raise BackendError("the engine is shut down", code=ErrorCode.SHUTTING_DOWN)
            self._pending[stage].append(_Request(stage, key, work, deadline, future, expires))
            self._cv.notify()
        return future

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """While inside, submitted work waits (it is batched and ordered when the block exits)."""
        with self._cv:
            self._pauses += 1
        try:
            yield
        finally:
            with self._cv:
                self._pauses -= 1
                self._cv.notify()

    def close(self) -> None:
        """Stop the engine thread; pending work fails with ``shutting_down``. Safe to call twice."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        for completer in self._completers:
            if completer.is_alive() and threading.current_thread() is not completer:
                completer.join()

    def stage_stats(self) -> dict[str, StageStats]:
        """A snapshot of every stage's counters, with the items waiting now."""
        with self._cv:
            return {
                stage.value: dataclasses.replace(self.stats[stage], queued=len(self._pending[stage])) for stage in Stage
            }

    def capture(self, *, hubert_window: int) -> None:
        """Capture the HuBERT graphs now (CUDA with a torch HuBERT), so that no session pays for it."""
        if self._hubert_graphs is not None:
            self._hubert_graphs.capture(hubert_window)

    @property
    def motion_stream(self) -> bool:
        """Whether HuBERT and LMDM run in a lane (and on CUDA a stream) of their own."""
        return self._lane[Stage.LMDM] is _Lane.MOTION

    def time_batch(self, stage: Stage, works: list[Any], repeats: int = 3) -> float:
        """Seconds one batch of ``works`` takes (synchronised; the median of ``repeats`` runs).

        Runs in the calling thread: for start-up measurements, before any session submits work.
        """
        return self.time_together({stage: works}, repeats)

    def time_together(self, batches: dict[Stage, list[Any]], repeats: int = 3) -> float:
        """Seconds one batch per stage takes, all launched before any is waited for, each on its lane's
        stream (so with a motion stream the motion batches run beside the render); the median of
        ``repeats`` runs. Start-up only, like :meth:`time_batch`."""
        elapsed = []
        # waited for render lane first, as its completion thread would (its finish queues the JPEG encoding)
        order = sorted(batches, key=lambda stage: self._lane[stage] is not _Lane.RENDER)
        with self._on_device():
            for _ in range(repeats):
                started = time.perf_counter()
                finishes = []
                for stage in order:
                    with self._in_lane(stage):
                        finishes.append(self._launch(stage, batches[stage], None))
                for finish in finishes:
                    finish()
                if self._cuda:
                    torch.cuda.synchronize(self.device)
                elapsed.append(time.perf_counter() - started)
        return sorted(elapsed)[len(elapsed) // 2]

    def _in_lane(self, stage: Stage) -> contextlib.AbstractContextManager[Any]:
        """On ``stage``'s lane stream (the current stream for the render lane)."""
        stream = self._lane_streams[self._lane[stage]]
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def measure_batch_costs(self, works: Callable[[Stage, int], list[Any]]) -> dict[Stage, dict[int, float]]:
        """Time every stage at every graph size on ``works(stage, size)`` (start-up, before any session
        submits work); from then on batches are planned by these costs (:meth:`plan_batch`)."""
        self.batch_costs = {
            stage: {size: self.time_batch(stage, works(stage, size)) for size in self.batch_sizes} for stage in Stage
        }
        return self.batch_costs

    def plan_batch(self, stage: Stage, waiting: int) -> tuple[int, int | None]:
        """(items to take, graph size to run them at) when ``waiting`` items of ``stage`` wait.

        With measured costs: the size with the lowest cost per item taken (``min(waiting, size)``
        items; the larger size on a tie). Without: everything up to the largest size, at the next
        size up (None)."""
        costs = self.batch_costs.get(stage)
        if not costs:
            return min(waiting, self.max_batch), None
        size = min(costs, key=lambda s: (costs[s] / min(waiting, s), -s))
        return min(waiting, size), size

    def cost_per_item(self, stage: Stage, waiting: int) -> float:
        """Device seconds per item when ``waiting`` items of ``stage`` wait (measured costs needed)."""
        taken, size = self.plan_batch(stage, waiting)
        assert size is not None, "measure_batch_costs() first"
        return self.batch_costs[stage][size] / taken

    # -- the engine thread ------------------------------------------------------------------

    def _next_batch(self) -> _Taken | None:
        """Wait for work and a free launch slot in its lane; take the batch of the stage whose earliest
        deadline is nearest and that need not wait to fill (:meth:`_hold_s`; as many items as
        :meth:`plan_batch` says), or one item to retry alone, and hold a slot of its lane for it.
        None: closing (pending work has been failed)."""
        with self._cv:
            while True:
                if self._closing:
                    self._fail_pending()
                    return None
                if self._retries and self._slot_free(self._retries[0].stage):
                    retry = self._retries.pop(0)
                    self._take_slot(retry.stage)
                    return _Taken(retry.stage, [retry], alone=True)
                self._shed_expired()
                timeout = None
                if not self._pauses:
                    stages = [stage for stage, items in self._pending.items() if items and self._slot_free(stage)]
                    holds = {stage: self._hold_s(stage) for stage in stages}
                    launchable = [stage for stage in stages if holds[stage] <= 0]
                    if launchable:
                        break
                    timeout = min(holds.values(), default=None)
                # else: work waits for a launch slot or a fuller batch
                idle = not self._retries and not any(self._pending.values())
                waited = time.perf_counter()
                self._cv.wait(timeout)
                if idle:
                    self.idle_s += time.perf_counter() - waited
            stage = min(launchable, key=lambda s: min(r.deadline for r in self._pending[s]))
            self._take_slot(stage)
            pending = self._pending[stage]
            pending.sort(key=lambda r: r.deadline)
            key = pending[0].key
            compatible = [r for r in pending if r.key == key]
            count, size = self.plan_batch(stage, len(compatible))
            batch = compatible[:count]
            taken = set(map(id, batch))
            self._pending[stage] = [r for r in pending if id(r) not in taken]
        live = [request for request in batch if request.future.set_running_or_notify_cancel()]  # else: it left
        return _Taken(stage, live, size)

    def _shed_expired(self) -> None:
        """Resolve the waiting frames past their lag bound with None, and drop those whose session left
        (``_cv`` held), before any batch is planned from what waits."""
        now = self._clock()
        for stage, pending in self._pending.items():
            kept: list[_Request] = []
            dropped: list[_Request] = []
            for request in pending:
                alive = not request.future.cancelled() and (request.expires is None or now <= request.expires)
                (kept if alive else dropped).append(request)
            if not dropped:
                continue
            for request in dropped:
                if request.future.set_running_or_notify_cancel():  # expired (else: cancelled, now notified)
                    self.shed += 1
                    request.future.set_result(None)
            self._pending[stage] = kept

    def _hold_s(self, stage: Stage) -> float:
        """Seconds the waiting items of ``stage`` should wait for more (:func:`hold_seconds`; ``_cv`` held).
        Without measured costs batches never wait."""
        costs = self.batch_costs.get(stage)
        lane = self._lane[stage]
        if stage not in FILLING_STAGES or not costs or not self._in_flight[lane]:
            return 0.0
        if any(items for other, items in self._pending.items() if other is not stage and self._lane[other] is lane):
            return 0.0  # the lane's other stages wait too: it is not this batch alone that would queue
        pending = self._pending[stage]
        expiries = [r.expires for r in pending if r.expires is not None]
        return hold_seconds(
            waiting=len(pending),
            full=self.plan_batch(stage, self.max_batch)[0],
            lane_free_in=self._lane_free_at[lane] - time.perf_counter(),
            lead=LAUNCH_LEAD * self._launch_s[stage],
            expires_in=min(expiries) - self._clock() if expiries else math.inf,
        )

    def _slot_free(self, stage: Stage) -> bool:
        return self._in_flight[self._lane[stage]] < self._slots

    def _take_slot(self, stage: Stage) -> None:
        """Hold a launch slot of ``stage``'s lane (``_cv`` held, a slot free)."""
        self._in_flight[self._lane[stage]] += 1

    def _release_slot(self, stage: Stage) -> None:
        with self._cv:
            self._in_flight[self._lane[stage]] -= 1
            assert self._in_flight[self._lane[stage]] >= 0, "a launch slot released twice"
            self._cv.notify()

    def _fail_pending(self) -> None:
        failure = _shutting_down()
        for request in self._retries:
            request.future.set_exception(failure)
        self._retries.clear()
        for pending in self._pending.values():
            for request in pending:
                if request.future.set_running_or_notify_cancel():
                    request.future.set_exception(failure)
            pending.clear()

    @contextlib.contextmanager
    def _on_device(self) -> Iterator[None]:
        """Inference mode, on the engine's own CUDA stream where there is one."""
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with stream, torch.inference_mode():
            yield

    def _run(self) -> None:
        try:
            with self._on_device():
                while True:
                    # a batch is formed when a launch slot of its lane is free (render: and it need not wait to fill)
                    taken = self._next_batch()
                    if taken is None:
                        return
                    try:
                        self._run_batch(taken.stage, taken.batch, taken.size, overlap=not taken.alone)
                    except Exception as exc:  # a bug outside the stages: fail the batch, keep the engine alive
                        logger.exception("engine: %s batch failed outside its stage", taken.stage.value)
                        _fail_unresolved(taken.batch, exc)
        finally:
            for launched in self._launched.values():
                launched.put(None)  # a completion thread stops after the batches before it

    def _run_batch(self, stage: Stage, batch: list[_Request], size: int | None, *, overlap: bool) -> None:
        """Launch ``batch`` (at graph ``size``) in the launch slot of its lane the caller holds, on the
        lane's stream; resolve it on the lane's completion thread (``overlap``) or here. The slot is
        released once it is resolved."""
        if not batch:
            self._release_slot(stage)
            return
        started = time.perf_counter()
        span = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if self._cuda else None
        try:
            with self._in_lane(stage):
                if span is not None:
                    span[0].record()
                finish = self._launch(stage, [r.work for r in batch], size)
                if span is not None:
                    span[1].record()
        except Exception as exc:
            self._release_slot(stage)
            self._batch_failed(stage, batch, exc)
            return
        launched_at = time.perf_counter()
        cost = self.batch_costs.get(stage, {}).get(size, 0.0) if size is not None else 0.0
        launched = _Launched(stage, batch, finish, started, span, cost)
        with self._cv:
            lane = self._lane[stage]
            self._on_lane[lane].append(launched)
            self._lane_free_at[lane] = max(started, self._lane_free_at[lane]) + cost
            elapsed, previous = launched_at - started, self._launch_s[stage]
            self.stats[stage].launch_s += elapsed
            self._launch_s[stage] = 0.8 * previous + 0.2 * elapsed if previous else elapsed
        if overlap:
            self._launched[self._lane[stage]].put(launched)
        else:
            self._resolve(launched)

    def _complete(self, lane: _Lane) -> None:
        """A lane's completion thread: resolve its launched batches in launch order."""
        with torch.inference_mode():
            while (launched := self._launched[lane].get()) is not None:
                try:
                    self._resolve(launched)
                except Exception as exc:  # a bug outside finish(): fail the batch, keep resolving the next ones
                    logger.exception("engine: resolving a %s batch failed", launched.stage.value)
                    _fail_unresolved(launched.batch, exc)

    def _resolve(self, launched: _Launched) -> None:
        """Wait for a launched batch and resolve its futures; the batch's launch slot is released here."""
        try:
            self._off_lane(launched)
            self._resolve_batch(launched)
        finally:
            self._release_slot(launched.stage)

    def _off_lane(self, launched: _Launched) -> None:
        """Wait until ``launched`` is done on the device (on CUDA its last kernel; its results are
        encoded and handed out after that), then restart its lane's due-free time from now: the
        lane's next batch runs from then."""
        try:
            if launched.span is not None:
                with contextlib.suppress(RuntimeError):  # a device fault: finish() raises it, to the batch's handling
                    launched.span[1].synchronize()
        finally:
            with self._cv:
                lane = self._lane[launched.stage]
                on_lane = self._on_lane[lane]
                on_lane.remove(launched)
                self._lane_free_at[lane] = time.perf_counter() + sum(other.cost for other in on_lane)
                self._cv.notify()

    def _resolve_batch(self, launched: _Launched) -> None:
        batch, stage = launched.batch, launched.stage
        try:
            results = launched.finish()
        except Exception as exc:
            self._batch_failed(stage, batch, exc)
            return
        if launched.span is not None:
            launched.span[1].synchronize()  # finish() waited for the results, recorded just before this
            busy_s = launched.span[0].elapsed_time(launched.span[1]) / 1000
        else:
            busy_s = time.perf_counter() - launched.started
        with self._cv:  # the engine thread resolves the items it runs again alone
            stats = self.stats[stage]
            stats.batches += 1
            stats.items += len(batch)
            stats.last_batch = len(batch)
            stats.busy_s += busy_s
        for request, result in zip(batch, results):
            request.future.set_result(result)

    def _batch_failed(self, stage: Stage, batch: list[_Request], exc: BaseException) -> None:
        """``batch`` raised (at its launch or its finish): the engine thread runs its items again, each
        alone, to find those at fault; one item alone fails with the error."""
        with self._cv:
            self.stats[stage].failures += 1
            if len(batch) > 1 and not self._closing:
                logger.warning(
                    "engine %s batch of %d failed (%s); retrying its items one by one", stage.value, len(batch), exc
                )
                self._retries.extend(batch)
                self._cv.notify()
                batch = []
        failure = _shutting_down() if len(batch) > 1 else _as_backend_error(exc)
        for request in batch:  # one item alone, or the engine is closing: nobody would run them again
            request.future.set_exception(failure)
        self._release_memory(exc)

    def _release_memory(self, exc: BaseException) -> None:
        if self._cuda and is_out_of_memory(exc):
            try:
                torch.cuda.empty_cache()
            except RuntimeError as error:  # e.g. a graph being captured meanwhile: the memory stays cached
                logger.warning("engine: could not release cached device memory: %s", error)

    def _launch(self, stage: Stage, works: list[Any], size: int | None) -> Finish:
        """Queue ``works`` on the device at graph ``size`` (None: the next size up); returns what waits for them."""
        launches: dict[Stage, Callable[[list[Any], int | None], Finish]] = {
            Stage.HUBERT: self._launch_hubert,
            Stage.LMDM: self._launch_lmdm,
            Stage.RENDER: self._launch_render,
        }
        return launches[stage](works, size)

    # -- stages -----------------------------------------------------------------------------

    def _launch_hubert(self, windows: list[np.ndarray], size: int | None) -> Finish:
        batch = np.stack(windows)
        if self._hubert_graphs is None:  # onnxruntime, or the CPU: computed here
            features = self._hubert.chunk_features_batch(batch)
            return lambda: [torch.from_numpy(f) for f in features]
        embeddings, ready = _to_host(self._hubert_graphs(batch, size))

        def finish() -> list[Any]:
            ready.synchronize()
            return [torch.from_numpy(window_features(e, self._hubert.chunksize)) for e in embeddings.numpy()]

        return finish

    def _launch_lmdm(self, works: list[WindowWork], size: int | None) -> Finish:
        dev = self.device
        kp_cond = _to_device(torch.cat([w.kp_cond for w in works]), dev)
        cond = _to_device(torch.cat([w.cond for w in works]), dev)
        x_T = _to_device(torch.cat([w.x_T for w in works]), dev)
        noise = _to_device(torch.cat([w.noise for w in works], dim=1), dev)
        motion, ready = _to_host(self.sampler(works[0].steps, kp_cond, cond, x_T, noise, size=size).float())

        def finish() -> list[Any]:
            ready.synchronize()
            return list(motion.clone())  # sessions keep the rows: in pageable memory, not the pinned pool

        return finish

    def _launch_render(self, works: list[RenderWork], size: int | None) -> Finish:
        dev = self.device
        x_s = _to_device(torch.cat([w.x_s for w in works]), dev)
        x_d = _to_device(torch.cat([w.x_d for w in works]), dev)
        stitched = [i for i, w in enumerate(works) if w.stitch]
        if stitched:
            rows = _to_device(torch.tensor(stitched), dev) if len(stitched) < len(works) else None
            src, drv = (x_s, x_d) if rows is None else (x_s[rows], x_d[rows])
            out = self._stitch(kp_source=src, kp_driving=drv)["out"].reshape(drv.shape).to(x_d.dtype)
            if rows is None:
                x_d = out
            else:
                x_d = x_d.clone()
                x_d[rows] = out
        renders = self._renderer([w.f_s for w in works], x_s, x_d, size=size)
        images = _paste_back_by_plan(works, renders)
        jpeg_rows = [i for i, w in enumerate(works) if w.jpeg_quality is not None and self._nvjpeg]
        host_images = {i: _to_host(images[i]) for i in sorted(set(range(len(works))) - set(jpeg_rows))}
        rendered = torch.cuda.Event() if self._cuda else None
        if rendered is not None:
            rendered.record()

        def finish() -> list[Any]:
            encoded = self._encode_jpeg(
                [images[i] for i in jpeg_rows], [int(works[i].jpeg_quality or 0) for i in jpeg_rows], rendered
            )
            jpegs = dict(zip(jpeg_rows, encoded))
            frames = []
            for i, work in enumerate(works):
                if i in jpegs:
                    frames.append(VideoFrame(index=work.index, image=None, jpeg=jpegs[i]))
                else:
                    image, ready = host_images[i]
                    ready.synchronize()
                    frames.append(VideoFrame(index=work.index, image=image.numpy().copy()))  # out of the pinned pool
            return frames

        return finish

    def _encode_jpeg(
        self, images: list[Tensor], qualities: list[int], rendered: torch.cuda.Event | None
    ) -> list[bytes]:
        """nvjpeg through torchvision, on the JPEG stream once ``rendered`` is reached: one batched
        call per quality; one device→host copy in all."""
        if not images:
            return []
        from torchvision.io import encode_jpeg

        assert self._jpeg_stream is not None and rendered is not None  # nvjpeg is CUDA only
        out: list[bytes | None] = [None] * len(images)
        with torch.cuda.stream(self._jpeg_stream):
            self._jpeg_stream.wait_event(rendered)
            for image in images:  # made on the engine stream, read on this one
                image.record_stream(self._jpeg_stream)
            for quality in sorted(set(qualities)):
                rows = [i for i, q in enumerate(qualities) if q == quality]
                chw = [images[i].permute(2, 0, 1).contiguous() for i in rows]
                encoded = encode_jpeg(chw, quality=int(quality))
                sizes = [int(e.numel()) for e in encoded]
                flat = torch.cat([e.reshape(-1) for e in encoded]).cpu().numpy()
                offsets = np.cumsum([0, *sizes])
                for row, start, end in zip(rows, offsets[:-1], offsets[1:]):
                    out[row] = flat[start:end].tobytes()
        return out  # type: ignore[return-value]


class _HubertGraphs:
    """A torch HuBERT's forward replayed as one CUDA graph per batch size (a window is a few
    hundred small kernels: launched one by one they cost ~20 ms, whatever the batch)."""

    def __init__(
        self, module: torch.nn.Module, fp16: bool, batch_sizes: tuple[int, ...], *, capture_priority: int = 0
    ) -> None:
        self.module = module
        self.fp16 = fp16
        self.capture_priority = capture_priority
        self.device = next(module.parameters()).device
        self.batch_sizes = batch_sizes
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, Tensor, Tensor]] = {}

    def _forward(self, windows: Tensor) -> Tensor:
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.fp16):
            return self.module(windows).float()

    def _graph(self, size: int, length: int) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor]:
        entry = self._graphs.get((size, length))
        if entry is None:
            static = torch.zeros((size, length), device=self.device)
            graph, out = capture_graph(
                lambda: self._forward(static), self.device, warmup_iters=2, priority=self.capture_priority
            )
            entry = self._graphs[(size, length)] = (graph, static, out)
        return entry

    def capture(self, length: int) -> None:
        for size in self.batch_sizes:
            self._graph(size, length)

    def __call__(self, windows: np.ndarray, size: int | None = None) -> Tensor:
        """(B, samples) windows → (B, frames, 1024) float32 embeddings on the device (B > the
        largest graph: a new tensor; else a view of the graph's output, valid until its next replay).
        ``size``: the graph to run B ≤ size windows at (None: the next size up)."""
        parts = []
        largest = self.batch_sizes[-1]
        for start in range(0, len(windows), largest):
            rows = torch.from_numpy(windows[start : start + largest])
            n = rows.shape[0]
            graph, static, out = self._graph(padded_batch_size(max(n, size or n), self.batch_sizes), rows.shape[1])
            static[:n].copy_(_to_device(rows, self.device))
            graph.replay()
            parts.append(out[:n] if len(windows) <= largest else out[:n].clone())
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _paste_back_by_plan(works: list[RenderWork], renders: Tensor) -> list[Tensor]:
    """Each render pasted into its source frame: the frames of one paste plan (one avatar's source
    frame, shared by its sessions) at once."""
    rows_by_plan: dict[int, list[int]] = {}
    for i, work in enumerate(works):
        rows_by_plan.setdefault(id(work.plan), []).append(i)
    images: list[Tensor | None] = [None] * len(works)
    for rows in rows_by_plan.values():
        if len(rows) == renders.shape[0]:
            own = renders
        else:  # the row indices go up pinned and asynchronously: a plain copy would wait for the stream
            own = renders.index_select(0, _to_device(torch.tensor(rows), renders.device))
        pasted = paste_back_many(works[rows[0]].plan, own)
        for row, image in zip(rows, pasted):
            images[row] = image
    return images  # type: ignore[return-value]


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class _Ready:
    """Done at once: what a host tensor's copy "event" is on the CPU."""

    def synchronize(self) -> None:
        return None


def _to_host(tensor: Tensor) -> tuple[Tensor, torch.cuda.Event | _Ready]:
    """A host copy of ``tensor`` and the event after which it holds the values: on CUDA the copy
    into pinned memory is queued on the current stream (no wait here)."""
    if tensor.device.type != "cuda":
        return tensor, _Ready()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _shutting_down() -> BackendError:
    return BackendError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN)


def _fail_unresolved(batch: list[_Request], exc: BaseException) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(exc)


def _as_backend_error(exc: BaseException) -> BaseException:
    if is_out_of_memory(exc):
        logger.warning("engine: out of device memory: %s", exc)
        return BackendError.from_fault(exc)
    return exc
