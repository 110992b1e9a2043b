"""DDIM sampler: schedule values, step math, noise reuse, determinism, CUDA graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditto.backends.talkinghead.models.lmdm import MotionDecoder
from ditto.backends.talkinghead.pipeline.sampler import (
    CudaGraphSampler,
    DDIMSampler,
    ddim_time_pairs,
    denoise_fn_from_runner,
    sample_window,
)
from ditto.backends.talkinghead.pipeline.schedule import cosine_alphas_cumprod

SHAPE = (1, 80, 265)


def test_cosine_schedule_values() -> None:
    ac = cosine_alphas_cumprod()
    assert ac.dtype == torch.float32 and ac.shape == (1000,)
    assert ac[0].item() == pytest.approx(0.99996, abs=5e-6)
    assert ac[499].item() == pytest.approx(0.4938, abs=1e-4)
    assert ac[999].item() == pytest.approx(2.4e-9, rel=0.05)
    assert bool((ac[1:] < ac[:-1]).all())


def test_cosine_schedule_matches_float64_recipe() -> None:
    n, s = 1000, 0.008
    x = np.arange(n + 1, dtype=np.float64) / n + s
    f = np.cos(x / (1 + s) * np.pi / 2) ** 2
    f = f / f[0]
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999).astype(np.float32)
    expected = np.cumprod((1 - betas).astype(np.float64))
    np.testing.assert_allclose(cosine_alphas_cumprod().numpy(), expected, rtol=2e-5, atol=1e-12)
    assert betas.max() == pytest.approx(0.999)  # the clip is active at the end of the schedule


def test_time_pairs() -> None:
    assert ddim_time_pairs(10) == [
        (999, 899),
        (899, 799),
        (799, 699),
        (699, 599),
        (599, 499),
        (499, 399),
        (399, 299),
        (299, 199),
        (199, 99),
        (99, -1),
    ]
    p50 = ddim_time_pairs(50)
    assert len(p50) == 50 and p50[0] == (999, 979) and p50[-1] == (19, -1)
    assert ddim_time_pairs(1) == [(999, -1)]
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            ddim_time_pairs(bad)


def test_step_coefficients_and_update() -> None:
    sampler = DDIMSampler(SHAPE)
    sched = sampler.set_timesteps(10, generator=torch.Generator().manual_seed(0))
    ac = cosine_alphas_cumprod()
    a, an = ac[999], ac[899]
    sigma = torch.sqrt((1 - a / an) * (1 - an) / (1 - a))
    # float32 like upstream: c = √(1 − ᾱ_next − σ²) is a near-total cancellation at step 0
    c = torch.sqrt(1 - an - sigma**2)
    assert sched.sigma[0].item() == pytest.approx(sigma.item(), rel=1e-6)
    assert sched.c[0].item() == pytest.approx(c.item(), rel=1e-6)
    assert sched.sigma[0].item() == pytest.approx(float(np.sqrt(1 - float(an))), rel=1e-4)  # ᾱ_t ≈ 0
    assert sched.sqrt_alpha_next[0].item() == pytest.approx(an.sqrt().item(), rel=1e-6)
    assert sched.noise.shape == (9, *SHAPE)
    assert [int(t.item()) for t in sched.time_conds] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert all(t.dtype == torch.int64 and t.shape == (1,) for t in sched.time_conds)

    x0, eps, xt = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    expected = x0 * an.sqrt().float() + c.float() * eps + sigma.float() * sched.noise[0]
    torch.testing.assert_close(sampler.step(xt, x0, eps, 0), expected, rtol=1e-5, atol=1e-5)
    assert sampler.step(xt, x0, eps, 9) is x0  # last pair (t_next = -1) returns x0


def test_small_step_counts_stay_finite() -> None:
    for steps in range(1, 12):
        sched = DDIMSampler(SHAPE).set_timesteps(steps, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(sched.c).all() and torch.isfinite(sched.sigma).all(), steps


def test_step_before_setup_raises() -> None:
    with pytest.raises(RuntimeError, match="set_timesteps"):
        DDIMSampler(SHAPE).step(torch.zeros(SHAPE), torch.zeros(SHAPE), torch.zeros(SHAPE), 0)


class RecordingDenoiser:
    """x0 = 0.5·x + mean of the condition; pred_noise = x − x0 (any deterministic map will do)."""

    def __init__(self) -> None:
        self.times: list[int] = []

    def __call__(self, x, cond_frame, cond, time_cond):
        self.times.append(int(time_cond.item()))
        x0 = 0.5 * x + cond.mean() + cond_frame.mean()
        return x - x0, x0


def test_sample_window_loop_by_hand() -> None:
    sampler = DDIMSampler(SHAPE)
    sampler.set_timesteps(4, generator=torch.Generator().manual_seed(0))
    den = RecordingDenoiser()
    kp, cond = torch.randn(1, 265), torch.randn(1, 80, 1103)
    x_T = torch.randn(SHAPE)
    out = sample_window(den, kp, cond, sampler, x_T=x_T)
    assert den.times == [999, 749, 499, 249]
    x = x_T
    for i in range(4):
        eps, x0 = den(x, kp, cond, torch.tensor([0]))
        x = (
            x0
            if i == 3
            else x0 * sampler.schedule.sqrt_alpha_next[i]
            + sampler.schedule.c[i] * eps
            + sampler.schedule.sigma[i] * sampler.schedule.noise[i]
        )
    torch.testing.assert_close(out, x)


def test_noise_drawn_once_and_reused_across_windows() -> None:
    sampler = DDIMSampler(SHAPE)
    sampler.set_timesteps(10, generator=torch.Generator().manual_seed(5))
    noise_before = sampler.schedule.noise.clone()
    den = RecordingDenoiser()
    kp, cond = torch.zeros(1, 265), torch.zeros(1, 80, 1103)
    x_T = torch.randn(SHAPE)
    w1 = sample_window(den, kp, cond, sampler, x_T=x_T)
    w2 = sample_window(den, kp, cond, sampler, x_T=x_T)
    assert torch.equal(w1, w2)  # same x_T + same per-step noise → same window
    assert torch.equal(sampler.schedule.noise, noise_before)
    # same S without a generator keeps the noise; a generator redraws it
    version = sampler.version
    sampler.set_timesteps(10)
    assert sampler.version == version and torch.equal(sampler.schedule.noise, noise_before)
    sampler.set_timesteps(10, generator=torch.Generator().manual_seed(6))
    assert sampler.version == version + 1 and not torch.equal(sampler.schedule.noise, noise_before)


def test_fresh_x_T_per_window() -> None:
    sampler = DDIMSampler(SHAPE)
    sampler.set_timesteps(10, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(11)
    den = RecordingDenoiser()
    kp, cond = torch.zeros(1, 265), torch.zeros(1, 80, 1103)
    w1 = sample_window(den, kp, cond, sampler, generator=gen)
    w2 = sample_window(den, kp, cond, sampler, generator=gen)
    assert not torch.equal(w1, w2)


def _run(seed: int, model: MotionDecoder, kp, cond) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sampler = DDIMSampler(SHAPE)
    sampler.set_timesteps(3, generator=gen)
    with torch.inference_mode():
        return sample_window(model, kp, cond, sampler, generator=gen)


def test_determinism_with_a_seed_on_a_real_model() -> None:
    torch.manual_seed(0)
    model = MotionDecoder(latent_dim=64, ff_size=128, num_layers=2).eval()
    kp, cond = torch.randn(1, 265), torch.randn(1, 80, 1103)
    a, b, c = _run(1, model, kp, cond), _run(1, model, kp, cond), _run(2, model, kp, cond)
    assert a.shape == SHAPE and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_denoise_fn_from_runner_maps_names() -> None:
    seen = {}

    def runner(**kw):
        seen.update(kw)
        return {"x_start": kw["x"] * 2, "pred_noise": kw["x"] * 3}

    fn = denoise_fn_from_runner(runner)
    x = torch.ones(SHAPE)
    eps, x0 = fn(x, torch.zeros(1, 265), torch.zeros(1, 80, 1103), torch.tensor([5]))
    assert set(seen) == {"x", "cond_frame", "cond", "time_cond"}
    assert torch.equal(eps, x * 3) and torch.equal(x0, x * 2)


def test_cuda_graph_sampler_falls_back_to_eager_on_cpu() -> None:
    sampler = DDIMSampler(SHAPE)
    sampler.set_timesteps(5, generator=torch.Generator().manual_seed(0))
    graph = CudaGraphSampler(RecordingDenoiser(), sampler, cond_shape=(1, 80, 1103))
    kp, cond, x_T = torch.randn(1, 265), torch.randn(1, 80, 1103), torch.randn(SHAPE)
    out = graph(kp, cond, x_T=x_T)
    assert not graph.use_graph and not graph.captured
    torch.testing.assert_close(out, sample_window(RecordingDenoiser(), kp, cond, sampler, x_T=x_T))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_graph_sampler_matches_eager_on_gpu() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = MotionDecoder().eval().to(dev)
    sampler = DDIMSampler(SHAPE, device=dev)
    sampler.set_timesteps(10, generator=torch.Generator(dev).manual_seed(0))
    graphed = CudaGraphSampler(model, sampler, cond_shape=(1, 80, 1103))
    for seed in (1, 2):
        g = torch.Generator(dev).manual_seed(seed)
        kp, cond = torch.randn(1, 265, device=dev, generator=g), torch.randn(1, 80, 1103, device=dev, generator=g)
        x_T = torch.randn(SHAPE, device=dev, generator=g)
        out = graphed(kp, cond, x_T=x_T)
        with torch.inference_mode():
            ref = sample_window(model, kp, cond, sampler, x_T=x_T)
        assert graphed.captured
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # a new schedule forces a new capture
    sampler.set_timesteps(5, generator=torch.Generator(dev).manual_seed(3))
    out = graphed(kp, cond, x_T=x_T)
    with torch.inference_mode():
        ref = sample_window(model, kp, cond, sampler, x_T=x_T)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # x_T drawn from a generator inside the graph path is reproducible
    a = graphed(kp, cond, generator=torch.Generator(dev).manual_seed(9))
    b = graphed(kp, cond, generator=torch.Generator(dev).manual_seed(9))
    assert torch.equal(a, b)
