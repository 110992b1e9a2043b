"""DDIM sampling for the LMDM motion diffusion model.

The sampler is not the model: :class:`DDIMSampler` owns the noise schedule,
the time steps and the per-step noise; the denoiser is the torch
:class:`~ditto.backends.talkinghead.models.lmdm.MotionDecoder` or any callable
``denoise_fn(x, cond_frame, cond, time_cond) -> (pred_noise, x_start)`` (a runner of
the ONNX/TensorRT ``lmdm`` model wrapped by :func:`denoise_fn_from_runner`).
:func:`sample_window` keeps the loop in plain view.

Numerics follow the official LMDM (docs/pipeline.md §5):

* 1000-step cosine schedule (s = 0.008); betas formed in float64, clipped to
  [0, 0.999], cast to float32; ᾱ = cumprod(1 − β) in float32
  (:func:`~ditto.backends.talkinghead.pipeline.schedule.cosine_alphas_cumprod`, shared
  with the torch LMDM).
* time steps ``linspace(-1, 999, S+1)`` truncated to int, reversed, taken in
  consecutive pairs (t, t_next): S=10 → (999, 899) … (99, −1).
* DDIM with eta = 1 on x0-predictions:
  σ = √((1 − ᾱ_t/ᾱ_next)(1 − ᾱ_next)/(1 − ᾱ_t)), c = √(1 − ᾱ_next − σ²),
  x ← √ᾱ_next·x0 + c·ε + σ·z_k; the last pair (t_next = −1) returns x0.
* The S−1 noise tensors z_k are drawn ONCE in :meth:`DDIMSampler.set_timesteps`
  and reused for every window; only x_T is drawn fresh per window.

A window's S calls share ``cond_frame``, ``cond`` and the S time steps. A denoiser that makes
use of that is a :class:`WindowDenoiser` (the torch ``MotionDecoder``: ``prepare_window`` once,
then S ``denoise_step`` calls); a plain ``DenoiseFn`` (the ONNX/TensorRT runners, which take the
official per-call contract) runs through :class:`PerStepDenoiser`.

Everything stays in torch on the sampler's device. Shapes are static and the
loop has no host synchronisation, so :class:`CudaGraphSampler` can capture the
whole S-step loop in one CUDA graph (eager fallback on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ditto.backends.talkinghead.pipeline.schedule import N_TRAIN_STEPS, cosine_alphas_cumprod
from ditto.backends.talkinghead.runtime.base import DEFAULT_BATCH_SIZES, padded_batch_size
from ditto.backends.talkinghead.runtime.cuda_graphs import capture_graph

# (x_t, cond_frame, cond, time_cond) -> (pred_noise, x_start)
DenoiseFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


@runtime_checkable
class WindowDenoiser(Protocol):
    """A denoiser that does the work a window's steps share once: ``prepare_window(cond_frame,
    cond, time_conds)``, then ``denoise_step(x, window, i)`` for step i of ``time_conds``."""

    def prepare_window(self, cond_frame: Tensor, cond: Tensor, time_conds: Sequence[Tensor]) -> Any: ...

    def denoise_step(self, x: Tensor, window: Any, step: int) -> tuple[Tensor, Tensor]: ...


class PerStepDenoiser:
    """A plain :data:`DenoiseFn` as a :class:`WindowDenoiser`: nothing prepared, the whole call per step."""

    def __init__(self, denoise_fn: DenoiseFn) -> None:
        self.denoise_fn = denoise_fn

    def prepare_window(self, cond_frame: Tensor, cond: Tensor, time_conds: Sequence[Tensor]) -> tuple:
        return cond_frame, cond, tuple(time_conds)

    def denoise_step(self, x: Tensor, window: tuple, step: int) -> tuple[Tensor, Tensor]:
        cond_frame, cond, time_conds = window
        return self.denoise_fn(x, cond_frame, cond, time_conds[step])


def as_window_denoiser(denoiser: WindowDenoiser | DenoiseFn) -> WindowDenoiser:
    return denoiser if isinstance(denoiser, WindowDenoiser) else PerStepDenoiser(denoiser)


def window_denoiser_for(runner: Callable[..., Mapping[str, Tensor]]) -> WindowDenoiser:
    """The LMDM runner's fastest exact denoiser: a PyTorch module's own window/step split when it has
    one (and runs in its own precision), else the runner's per-call contract."""
    from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner

    if isinstance(runner, TorchRunner) and not runner.autocast_fp16 and isinstance(runner.module, WindowDenoiser):
        return runner.module
    return PerStepDenoiser(denoise_fn_from_runner(runner))


def ddim_time_pairs(sampling_timesteps: int, n_train_steps: int = N_TRAIN_STEPS) -> list[tuple[int, int]]:
    """The S (t, t_next) pairs visited by DDIM, from t = n_train_steps−1 down to t_next = −1."""
    if not 1 <= sampling_timesteps <= n_train_steps:
        raise ValueError(f"sampling_timesteps must be in [1, {n_train_steps}], got {sampling_timesteps}")
    times = torch.linspace(-1, n_train_steps - 1, steps=sampling_timesteps + 1).int().tolist()
    times.reverse()
    return list(zip(times[:-1], times[1:]))


@dataclass(frozen=True, slots=True)
class DDIMSchedule:
    """Per-step constants of one ``set_timesteps`` call (all on the sampler's device).

    Step i < S−1 computes x ← sqrt_alpha_next[i]·x0 + c[i]·ε + sigma[i]·noise[i];
    step S−1 returns x0.
    """

    time_pairs: tuple[tuple[int, int], ...]  # S pairs (t, t_next)
    time_conds: tuple[Tensor, ...]  # S tensors (batch,) int64: the t fed to the model
    sqrt_alpha_next: Tensor  # (S−1,) float32
    c: Tensor  # (S−1,) float32
    sigma: Tensor  # (S−1,) float32
    noise: Tensor  # (S−1, *shape) float32, drawn once


class DDIMSampler:
    """DDIM (eta = 1) for x0-predicting models, noise drawn once per setup.

    Args:
        shape: shape of one sample window x, (batch, seq_frames, motion_dim) = (1, 80, 265).
        device: where schedule, noise and samples live (the model's device).
        eta: DDIM stochasticity (official: 1).
        n_train_steps: length of the training noise schedule (official: 1000).

    Call :meth:`set_timesteps` before sampling; calling it again with the
    same S and no generator keeps the existing noise (as the official setup does).
    """

    def __init__(
        self,
        shape: tuple[int, ...] = (1, 80, 265),
        *,
        device: torch.device | str = "cpu",
        eta: float = 1.0,
        n_train_steps: int = N_TRAIN_STEPS,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.device = torch.device(device)
        self.eta = float(eta)
        self.n_train_steps = int(n_train_steps)
        self.alphas_cumprod = cosine_alphas_cumprod(self.n_train_steps).to(self.device)
        self.schedule: DDIMSchedule | None = None
        # Bumped by every set_timesteps that changes tensors; lets CUDA graphs notice.
        self.version = 0

    @property
    def num_steps(self) -> int:
        return 0 if self.schedule is None else len(self.schedule.time_pairs)

    def set_timesteps(self, sampling_timesteps: int, *, generator: torch.Generator | None = None) -> DDIMSchedule:
        """Compute the S-step schedule and draw the S−1 per-step noise tensors.

        Args:
            sampling_timesteps: S, DDIM steps per window (cfg ``sampling_timesteps``).
            generator: torch generator on ``self.device`` for the noise; ``None``
                uses torch's global RNG. If S is unchanged and no generator is
                given, the current schedule (and its noise) is kept.
        """
        if self.schedule is not None and generator is None and self.num_steps == sampling_timesteps:
            return self.schedule
        pairs = ddim_time_pairs(sampling_timesteps, self.n_train_steps)
        batch = self.shape[0]
        time_conds = tuple(torch.full((batch,), t, dtype=torch.int64, device=self.device) for t, _ in pairs)
        ac = self.alphas_cumprod
        moving = [(t, tn) for t, tn in pairs if tn >= 0]
        idx_t = torch.tensor([t for t, _ in moving], dtype=torch.int64, device=self.device)
        idx_n = torch.tensor([tn for _, tn in moving], dtype=torch.int64, device=self.device)
        alpha, alpha_next = ac[idx_t], ac[idx_n]
        sigma = self.eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        # float32 like upstream; 1 − ᾱ_next − σ² cancels almost exactly at the first
        # step and can round below 0 for small S (upstream then yields NaN): clamp.
        c = (1 - alpha_next - sigma**2).clamp_min(0).sqrt()
        noise = torch.randn((len(moving), *self.shape), generator=generator, device=self.device, dtype=torch.float32)
        self.schedule = DDIMSchedule(
            time_pairs=tuple(pairs),
            time_conds=time_conds,
            sqrt_alpha_next=alpha_next.sqrt(),
            c=c,
            sigma=sigma,
            noise=noise,
        )
        self.version += 1
        return self.schedule

    def initial_noise(self, generator: torch.Generator | None = None) -> Tensor:
        """A fresh x_T ~ N(0, 1) of ``self.shape`` (drawn per window)."""
        return torch.randn(self.shape, generator=generator, device=self.device, dtype=torch.float32)

    def step(self, x: Tensor, x0: Tensor, pred_noise: Tensor, i: int) -> Tensor:
        """DDIM update from step i's model outputs; returns x for step i+1.

        ``x`` (x_t) is unused by the eta-form update but kept in the signature
        so callers pass what a scheduler step conventionally needs. The last
        step (t_next = −1) returns ``x0``.
        """
        del x
        sched = self._require_schedule()
        if i == len(sched.time_pairs) - 1:
            return x0
        return x0 * sched.sqrt_alpha_next[i] + sched.c[i] * pred_noise + sched.sigma[i] * sched.noise[i]

    def _require_schedule(self) -> DDIMSchedule:
        if self.schedule is None:
            raise RuntimeError("DDIMSampler.set_timesteps() must be called before sampling")
        return self.schedule


def sample_window(
    denoiser: WindowDenoiser | DenoiseFn,
    kp_cond: Tensor,
    cond: Tensor,
    sampler: DDIMSampler,
    *,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
) -> Tensor:
    """Sample one motion window with S denoiser calls.

    Args:
        denoiser: a :class:`WindowDenoiser`, or a plain
            ``(x, cond_frame, cond, time_cond) -> (pred_noise, x_start)``.
        kp_cond: motion of the frame before the window, (B, motion_dim).
        cond: per-frame condition, (B, seq_frames, cond_dim).
        sampler: a :class:`DDIMSampler` after ``set_timesteps``.
        generator: draws x_T (ignored when ``x_T`` is given).
        x_T: the starting noise; drawn fresh from ``generator`` when ``None``.

    Returns:
        The sampled window, ``sampler.shape`` = (B, seq_frames, motion_dim).
    """
    sched = sampler._require_schedule()
    denoiser = as_window_denoiser(denoiser)
    x = sampler.initial_noise(generator) if x_T is None else x_T
    with torch.inference_mode():
        window = denoiser.prepare_window(kp_cond, cond, sched.time_conds)
        for i in range(len(sched.time_conds)):
            pred_noise, x0 = denoiser.denoise_step(x, window, i)
            x = sampler.step(x, x0, pred_noise, i)
    return x


def denoise_fn_from_runner(runner: Callable[..., Mapping[str, Tensor]]) -> DenoiseFn:
    """Adapt a model runner (ONNX-named kwargs → dict) to the ``DenoiseFn`` signature."""

    def denoise(x: Tensor, cond_frame: Tensor, cond: Tensor, time_cond: Tensor) -> tuple[Tensor, Tensor]:
        out = runner(x=x, cond_frame=cond_frame, cond=cond, time_cond=time_cond)
        return out["pred_noise"], out["x_start"]

    return denoise


class CudaGraphSampler:
    """:func:`sample_window` with the whole S-step loop replayed as one CUDA graph.

    The denoiser must be capturable (a torch module on CUDA: static shapes, no
    host syncs). onnxruntime/TensorRT runners are not; use ``enabled=False``
    (or a CPU device) and the eager loop runs instead.

    The graph is captured lazily on the first call and captured again whenever
    the sampler's schedule changes (``set_timesteps`` with new noise or S).
    Inputs are copied into static buffers, x_T is drawn into its static buffer
    outside the graph (so a generator controls it), and the output is cloned.

    Args:
        denoiser: the model (see :func:`sample_window`).
        sampler: a :class:`DDIMSampler`; its ``device`` decides CUDA vs eager.
        cond_shape: (B, seq_frames, cond_dim) of ``cond``.
        enabled: set ``False`` to force the eager path.
        warmup_iters: eager runs on a side stream before capture (lazy inits, cuBLAS workspaces).
        capture_priority: of the streams the graph is captured on (see :mod:`~..runtime.cuda_graphs`).
    """

    def __init__(
        self,
        denoiser: WindowDenoiser | DenoiseFn,
        sampler: DDIMSampler,
        *,
        cond_shape: tuple[int, int, int],
        enabled: bool = True,
        warmup_iters: int = 2,
        capture_priority: int = 0,
    ) -> None:
        self.denoiser = as_window_denoiser(denoiser)
        self.capture_priority = capture_priority
        self.sampler = sampler
        self.cond_shape = tuple(cond_shape)
        self.warmup_iters = warmup_iters
        self.use_graph = bool(enabled) and sampler.device.type == "cuda" and torch.cuda.is_available()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_version = -1
        self._static: dict[str, Tensor] = {}

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(
        self, kp_cond: Tensor, cond: Tensor, *, generator: torch.Generator | None = None, x_T: Tensor | None = None
    ) -> Tensor:
        """Sample one window; same contract as :func:`sample_window`."""
        if not self.use_graph:
            return sample_window(self.denoiser, kp_cond, cond, self.sampler, generator=generator, x_T=x_T)
        if self._graph is None or self._graph_version != self.sampler.version:
            self._capture()
        st = self._static
        st["kp_cond"].copy_(kp_cond, non_blocking=True)
        st["cond"].copy_(cond, non_blocking=True)
        if x_T is None:
            st["x_T"].normal_(generator=generator)
        else:
            st["x_T"].copy_(x_T, non_blocking=True)
        assert self._graph is not None
        self._graph.replay()
        return st["out"].clone()

    def _loop(self) -> Tensor:
        st = self._static
        return sample_window(self.denoiser, st["kp_cond"], st["cond"], self.sampler, x_T=st["x_T"])

    def _capture(self) -> None:
        sampler = self.sampler
        sampler._require_schedule()
        dev = sampler.device
        self._graph = None
        self._static = {
            "kp_cond": torch.zeros((sampler.shape[0], sampler.shape[-1]), device=dev),
            "cond": torch.zeros(self.cond_shape, device=dev),
            "x_T": torch.zeros(sampler.shape, device=dev),
        }
        graph, self._static["out"] = capture_graph(
            self._loop, dev, warmup_iters=self.warmup_iters, priority=self.capture_priority
        )
        self._graph = graph
        self._graph_version = sampler.version


class BatchedWindowSampler:
    """Samples the LMDM windows of several sessions at once.

    Each row of a batch has its own x_T and its own per-step noise (drawn once per session,
    :meth:`DDIMSampler.set_timesteps`); the schedule constants depend only on the step count,
    so rows of one step count share one batched loop, and row i of the result is what that
    session's own :func:`sample_window` gives. On CUDA with a PyTorch LMDM the whole S-step
    loop is one captured graph per (S, batch size); a batch is padded to the next captured size.

    Args:
        runner: the LMDM runner (``x, cond_frame, cond, time_cond -> pred_noise, x_start``).
        device: where the loop runs (the runner's device).
        batch_sizes: the graph sizes (CUDA).
        denoiser: what the loop calls; default :func:`window_denoiser_for` the runner.
        capture_priority: of the streams its graphs are captured on (see :mod:`~..runtime.cuda_graphs`).

    Called from one thread (the device engine).
    """

    def __init__(
        self,
        runner: Callable[..., Mapping[str, Tensor]],
        *,
        device: torch.device | str,
        batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
        denoiser: WindowDenoiser | None = None,
        capture_priority: int = 0,
    ) -> None:
        from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner

        self.denoiser = window_denoiser_for(runner) if denoiser is None else denoiser
        self.capture_priority = capture_priority
        self.device = torch.device(device)
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.use_graph = isinstance(runner, TorchRunner) and self.device.type == "cuda" and torch.cuda.is_available()
        self._samplers: dict[tuple, CudaGraphSampler] = {}

    def capture(self, steps: int, window_shape: tuple[int, int], cond_dim: int) -> None:
        """Capture every batch size's graph for ``steps`` now (CUDA; no-op elsewhere).
        ``window_shape`` = (seq_frames, motion_dim) = (80, 265); ``cond_dim`` = 1103."""
        if self.use_graph:
            for size in self.batch_sizes:
                sampler = self._sampler_for(steps, size, tuple(window_shape), int(cond_dim))
                if not sampler.captured:
                    sampler._capture()

    def _sampler_for(self, steps: int, size: int, window_shape: tuple[int, ...], cond_dim: int) -> CudaGraphSampler:
        key = (steps, size, window_shape, cond_dim)
        sampler = self._samplers.get(key)
        if sampler is None:
            static = DDIMSampler((size, *window_shape), device=self.device)
            static.set_timesteps(steps, generator=torch.Generator(device=self.device).manual_seed(0))
            sampler = CudaGraphSampler(
                self.denoiser,
                static,
                cond_shape=(size, window_shape[0], cond_dim),
                enabled=self.use_graph,
                capture_priority=self.capture_priority,
            )
            self._samplers[key] = sampler
        return sampler

    def __call__(
        self, steps: int, kp_cond: Tensor, cond: Tensor, x_T: Tensor, noise: Tensor, *, size: int | None = None
    ) -> Tensor:
        """B windows: kp_cond (B,265), cond (B,80,C), x_T (B,80,265), noise (S-1,B,80,265) -> (B,80,265).
        ``size``: the graph to run B ≤ size windows at (None: the next size up)."""
        n = kp_cond.shape[0]
        largest = self.batch_sizes[-1] if self.use_graph else n
        parts = []
        for start in range(0, n, largest):
            stop = min(n, start + largest)
            parts.append(
                self._sample(
                    steps, kp_cond[start:stop], cond[start:stop], x_T[start:stop], noise[:, start:stop], size or 0
                )
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _sample(self, steps: int, kp_cond: Tensor, cond: Tensor, x_T: Tensor, noise: Tensor, at_least: int) -> Tensor:
        n = kp_cond.shape[0]
        size = n
        if self.use_graph:
            size = padded_batch_size(max(n, at_least), self.batch_sizes)
        sampler = self._sampler_for(steps, size, tuple(x_T.shape[1:]), int(cond.shape[-1]))
        if sampler.use_graph and not sampler.captured:
            sampler._capture()  # before the noise copy below: a capture re-creates the static buffers
        static_noise = sampler.sampler._require_schedule().noise
        if size > n:  # pad: rows past n compute on whatever they hold and are dropped
            kp_cond = torch.cat([kp_cond, kp_cond.new_zeros((size - n, *kp_cond.shape[1:]))])
            cond = torch.cat([cond, cond.new_zeros((size - n, *cond.shape[1:]))])
            x_T = torch.cat([x_T, x_T.new_zeros((size - n, *x_T.shape[1:]))])
        static_noise[:, :n].copy_(noise, non_blocking=True)
        return sampler(kp_cond, cond, x_T=x_T)[:n]
