"""LMDM: the motion-space diffusion transformer that turns audio features into motion.

Role (Ditto, arXiv 2411.19509): given a noisy 80-frame window of 265-d motion
vectors, the motion of the frame before the window (``cond_frame``) and the
per-frame condition (HuBERT audio 1024 | emotion 8 | eye open 2 | eye ball 6 |
source keypoints 63 = 1103), predict the clean window (x0-prediction).

:class:`MotionDecoder` is a re-implementation whose state dict is key- and
shape-identical to ``lmdm_v0.4_hubert.pth['model_state_dict']`` (249 keys,
47.8 M parameters). Its ``forward`` is one *guided* denoising call, the same
contract as the official ONNX/TensorRT ``lmdm`` model::

    x (B,80,265), cond_frame (B,265), cond (B,80,1103), time_cond (B,) int64
        -> pred_noise (B,80,265), x_start (B,80,265)

with classifier-free guidance ``uncond + w * (cond - uncond)`` (w = 2) computed
inside. Both guidance branches run as ONE transformer pass over a batch of 2B.

A DDIM window makes S such calls with the same ``cond_frame`` and ``cond`` at S known time
steps, so the call is split in two (``forward`` is the pair, for one step):
:meth:`MotionDecoder.prepare_window` does once per window everything that does not depend
on x (the condition encoder; the condition tokens' cross-attention keys and values in every
layer; the motion-before-the-window's share of the input projection; and, for all S steps in
one batch, the time embedding, every layer's FiLM scales and shifts and the two time tokens'
keys and values); :meth:`MotionDecoder.denoise_step` does step i's x-dependent rest (a
quarter of a step's arithmetic and a fifth of its kernels leave the loop). The per-token
LayerNorm, rotation and projections make this exact up to float rounding: the memory's keys
are the condition tokens' keys followed by the two time tokens' keys.

Architecture (docs/pipeline.md §4.3): pre-norm transformer layers; a rotary position
embedding over the full 512-d width (before the head split) applied to queries
and keys, never values; FiLM modulation from the diffusion-time embedding; a
2-layer condition encoder; cross-attention memory = LayerNorm(cond tokens ++ 2
time tokens). The unconditional branch swaps the encoded condition tokens for
``null_cond_embed`` and the pooled condition for ``null_cond_hidden``.

The module loads no files and picks no device: build it, load a state dict
(:func:`lmdm_from_checkpoint` does both for a checkpoint dict), move it. The ONNX
export with the official IO names (:data:`ONNX_INPUT_NAMES`, :data:`ONNX_OUTPUT_NAMES`)
lives with the tools that write checkpoints (:mod:`ditto.tools.onnx_export`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditto.backends.talkinghead.pipeline.schedule import N_TRAIN_STEPS, cosine_alphas_cumprod
from ditto.errors import ConfigError

#: IO names of the official ONNX/TensorRT ``lmdm`` model, in binding order.
ONNX_INPUT_NAMES: tuple[str, ...] = ("x", "cond_frame", "cond", "time_cond")
ONNX_OUTPUT_NAMES: tuple[str, ...] = ("pred_noise", "x_start")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full model width.

    ``freqs`` (dim/2,) = 10000^(-2i/dim). Feature pairs (2i, 2i+1) at position p
    are rotated by the angle p·freqs[i]. Positions start at 0 for every tensor
    rotated. One instance is shared by every layer; it therefore appears in
    the state dict under each owner (``rotary.freqs``,
    ``cond_encoder.0.rotary.freqs``, ...), matching the official checkpoint.
    """

    freqs: Tensor  # buffer (dim/2,)

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dim must be even, got {dim}")
        exponents = torch.arange(0, dim, 2).float() / dim
        self.register_buffer("freqs", 1.0 / (theta**exponents))

    def tables(self, seq_len: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """cos and sin of the rotation angles, each (seq_len, dim/2) float32."""
        freqs = self.freqs if device is None else self.freqs.to(device)
        positions = torch.arange(seq_len, device=freqs.device, dtype=freqs.dtype)
        angles = positions[:, None] * freqs[None, :]
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(t: Tensor, tables: tuple[Tensor, Tensor]) -> Tensor:
        """Rotate (…, L, dim) by precomputed ``tables`` for length L."""
        cos, sin = tables
        cos = cos.to(t.dtype)
        sin = sin.to(t.dtype)
        pairs = t.unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
        return rotated.flatten(-2)

    def forward(self, t: Tensor) -> Tensor:
        """Rotate (…, L, dim) with positions 0..L-1 along dim -2."""
        return self.rotate(t, self.tables(t.shape[-2], t.device))


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout.

    Keys: ``in_proj_weight`` (3E, E), ``in_proj_bias`` (3E,), ``out_proj.*``.
    :meth:`forward` is self-attention of rotated queries/keys (one tensor, projected in one matmul)
    over plain values; cross-attention projects its parts apart (:meth:`project_query`,
    :meth:`project_key_value`, :meth:`attend`), so a window's keys and values are projected once.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, qk: Tensor, value: Tensor) -> Tensor:
        """Self-attention: ``qk`` (B,L,E) is both query and key (rotated), ``value`` (B,L,E)."""
        e = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        q, k = F.linear(qk, w[: 2 * e], b[: 2 * e]).split(e, dim=-1)
        v = F.linear(value, w[2 * e :], b[2 * e :])
        return self.attend(q, k, v)

    def project_query(self, query: Tensor) -> Tensor:
        e = self.embed_dim
        return F.linear(query, self.in_proj_weight[:e], self.in_proj_bias[:e])

    def project_key_value(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (…, M, E) of ``key``/``value`` tokens; per token, so tokens may be projected apart."""
        e, w, b = self.embed_dim, self.in_proj_weight, self.in_proj_bias
        return F.linear(key, w[e : 2 * e], b[e : 2 * e]), F.linear(value, w[2 * e :], b[2 * e :])

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Projected q (B,L,E), k and v (B,M,E) → the heads' attention through ``out_proj``, (B,L,E)."""
        out = F.scaled_dot_product_attention(
            self._heads(q),
            self._heads(k),
            self._heads(v),
            dropout_p=self.dropout if self.training else 0.0,
        )
        bsz, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(bsz, n, self.embed_dim))


class FiLM(nn.Module):
    """Time-conditioned scale/shift: Mish → Linear(E, 2E). Key ``block.1``.

    Every FiLM of a step sees the same input, so the caller applies the Mish (``block.0``) once
    for all of them and ``forward`` takes Mish(t).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, 2 * dim))

    def forward(self, mish_t: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (…,B,1,E), from Mish(t) (…,B,E)."""
        scale, shift = self.block[1](mish_t).unsqueeze(-2).chunk(2, dim=-1)
        return scale, shift


def _modulate(h: Tensor, film: tuple[Tensor, Tensor]) -> Tensor:
    scale, shift = film
    return (scale + 1) * h + shift


RotTables = tuple[Tensor, Tensor]
LayerFilms = tuple[tuple[Tensor, Tensor], ...]  # a decoder layer's three (scale, shift)


class ConditionEncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with rotary q/k (keys of ``cond_encoder.i``)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.rotary = rotary

    def forward(self, x: Tensor, rot: RotTables) -> Tensor:
        """x (B,L,E) → (B,L,E); ``rot``: rotary tables of its L positions."""
        h = self.norm1(x)
        qk = RotaryEmbedding.rotate(h, rot)
        x = x + self.dropout1(self.self_attn(qk, h))
        h = self.norm2(x)
        h = self.linear2(self.dropout(F.gelu(self.linear1(h))))
        return x + self.dropout2(h)


class FiLMDecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attn, cross-attn, FFN, each FiLM-modulated.

    Keys of ``seqTransDecoder.stack.i``. Per sub-block: h = block(norm(x));
    x = x + (scale + 1)·h + shift with (scale, shift) = film_i(t).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout)
        self.multihead_attn = Attention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.film1 = FiLM(d_model)
        self.film2 = FiLM(d_model)
        self.film3 = FiLM(d_model)
        self.rotary = rotary

    def films(self, mish_t: Tensor) -> LayerFilms:
        """The three sub-blocks' (scale, shift) from Mish(t) (…,B,E)."""
        return (self.film1(mish_t), self.film2(mish_t), self.film3(mish_t))

    def forward(self, x: Tensor, films: LayerFilms, rot_x: RotTables, memory_kv: tuple[Tensor, Tensor]) -> Tensor:
        """x (B,L,E) → (B,L,E).

        ``films``: :meth:`films`; ``rot_x``: rotary tables of x's L positions; ``memory_kv``: the
        cross-attention keys (of the rotated memory) and values (of the memory), each (B,M,E).
        """
        h = self.norm1(x)
        qk = RotaryEmbedding.rotate(h, rot_x)
        x = x + _modulate(self.dropout1(self.self_attn(qk, h)), films[0])

        h = self.norm2(x)
        q = self.multihead_attn.project_query(RotaryEmbedding.rotate(h, rot_x))
        x = x + _modulate(self.dropout2(self.multihead_attn.attend(q, *memory_kv)), films[1])

        h = self.norm3(x)
        h = self.dropout3(self.linear2(self.dropout(F.gelu(self.linear1(h)))))
        return x + _modulate(h, films[2])


class DecoderStack(nn.Module):
    """Holds the decoder layers under the key prefix ``stack.i``."""

    def __init__(self, layers: list[FiLMDecoderLayer]) -> None:
        super().__init__()
        self.stack = nn.ModuleList(layers)


class SinusoidalTimeEmbedding(nn.Module):
    """Diffusion step t → [sin(t·f_k), cos(t·f_k)], f_k = exp(−k·ln(10000)/(half−1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        k = torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(k * (-math.log(10000.0) / (half - 1)))
        angles = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


@dataclass(frozen=True, slots=True)
class MotionWindow:
    """What the S denoising steps of one window share (:meth:`MotionDecoder.prepare_window`).

    Batch rows [0, B) are the conditional guidance branch, [B, 2B) the unconditional one;
    a leading S axis indexes the steps.
    """

    frame_projection: Tensor  # (B,1,E): cond_frame's share of the input projection, bias included
    memory_kv: tuple[tuple[Tensor, Tensor], ...]  # per layer: the condition tokens' cross-attn k, v (2B,L,E)
    time_kv: tuple[tuple[Tensor, Tensor], ...]  # per layer: the two time tokens' cross-attn k, v (S,2B,2,E)
    films: tuple[LayerFilms, ...]  # per layer: its three (scale, shift), each (S,2B,1,E)
    noise_scales: tuple[Tensor, Tensor]  # 1/√(1−ᾱ_t) and √(1/ᾱ_t − 1), each (S,B,1,1)
    rot_x: RotTables  # rotary tables of positions 0..L-1 (the window's frames and the condition tokens)


class MotionDecoder(nn.Module):
    """The LMDM denoiser; ``forward`` is one classifier-free-guided call.

    Args:
        nfeats: motion dims per frame (265 = scale 1, pitch/yaw/roll 3×66, t 3, exp 63).
        seq_len: frames per window (80); also the length of ``null_cond_embed``.
        latent_dim: model width (512).
        ff_size: FFN hidden width (1024).
        num_layers: decoder layers (8).
        num_heads: attention heads (8).
        dropout: dropout used in training mode only (0.1).
        cond_feature_dim: per-frame condition width (1103 for v0.4 hubert).
        guidance_weight: classifier-free guidance weight w (2, fixed in the official engine).
        n_train_steps: diffusion steps of the noise schedule used for ``pred_noise``.
    """

    sqrt_recip_one_minus_ac: Tensor  # buffer (n_train_steps,)
    sqrt_recip_ac_minus_one: Tensor  # buffer (n_train_steps,)

    def __init__(
        self,
        nfeats: int = 265,
        seq_len: int = 80,
        latent_dim: int = 512,
        ff_size: int = 1024,
        num_layers: int = 8,
        num_heads: int = 8,
        dropout: float = 0.1,
        cond_feature_dim: int = 1103,
        guidance_weight: float = 2.0,
        n_train_steps: int = N_TRAIN_STEPS,
    ) -> None:
        super().__init__()
        self.nfeats = nfeats
        self.seq_len = seq_len
        self.latent_dim = latent_dim
        self.cond_feature_dim = cond_feature_dim
        self.guidance_weight = float(guidance_weight)

        self.rotary = RotaryEmbedding(latent_dim)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(latent_dim),
            nn.Linear(latent_dim, 4 * latent_dim),
            nn.Mish(),
        )
        self.to_time_cond = nn.Sequential(nn.Linear(4 * latent_dim, latent_dim))
        # Two extra memory tokens of width latent_dim each.
        self.to_time_tokens = nn.Sequential(nn.Linear(4 * latent_dim, 2 * latent_dim))
        self.null_cond_embed = nn.Parameter(torch.randn(1, seq_len, latent_dim))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, latent_dim))
        self.norm_cond = nn.LayerNorm(latent_dim)
        self.input_projection = nn.Linear(2 * nfeats, latent_dim)
        self.cond_encoder = nn.ModuleList(
            ConditionEncoderLayer(latent_dim, num_heads, ff_size, dropout, self.rotary) for _ in range(2)
        )
        self.cond_projection = nn.Linear(cond_feature_dim, latent_dim)
        self.non_attn_cond_projection = nn.Sequential(
            nn.LayerNorm(latent_dim),
            nn.Linear(latent_dim, latent_dim),
            nn.SiLU(),
            nn.Linear(latent_dim, latent_dim),
        )
        self.seqTransDecoder = DecoderStack(
            [FiLMDecoderLayer(latent_dim, num_heads, ff_size, dropout, self.rotary) for _ in range(num_layers)]
        )
        self.final_layer = nn.Linear(latent_dim, nfeats)

        # Noise-schedule tables for pred_noise; derived, so not in the state dict.
        alphas_cumprod = cosine_alphas_cumprod(n_train_steps)
        self.register_buffer("sqrt_recip_one_minus_ac", torch.sqrt(1.0 / (1.0 - alphas_cumprod)), persistent=False)
        self.register_buffer("sqrt_recip_ac_minus_one", torch.sqrt(1.0 / alphas_cumprod - 1.0), persistent=False)

    # -- pieces -------------------------------------------------------------

    @property
    def decoder_layers(self) -> list[FiLMDecoderLayer]:
        return cast(list[FiLMDecoderLayer], list(self.seqTransDecoder.stack))

    def _time_embedding(self, time_cond: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) steps → FiLM input (B,E) and two memory tokens (B,2,E)."""
        hidden = self.time_mlp(time_cond)
        film_t = self.to_time_cond(hidden)
        tokens = self.to_time_tokens(hidden).unflatten(-1, (2, self.latent_dim))
        return film_t, tokens

    def _encode_condition(self, cond: Tensor, rot: RotTables) -> tuple[Tensor, Tensor]:
        """(B,L,D) condition → encoded tokens (B,L,E) and pooled hidden (B,E)."""
        tokens = self.cond_projection(cond)
        for layer in self.cond_encoder:
            tokens = layer(tokens, rot)
        pooled = self.non_attn_cond_projection(tokens.mean(dim=-2))
        return tokens, pooled

    # -- public -------------------------------------------------------------

    def prepare_window(self, cond_frame: Tensor, cond: Tensor, time_conds: Sequence[Tensor]) -> MotionWindow:
        """The work of S guided calls that does not depend on x: ``cond_frame`` (B,265), ``cond``
        (B,L,D), and the steps' ``time_conds`` (S tensors (B,) int64)."""
        b, length = cond.shape[:2]
        steps = len(time_conds)
        cos, sin = self.rotary.tables(length + 2, cond.device)
        rot_x, rot_time = (cos[:length], sin[:length]), (cos[length:], sin[length:])
        tokens, pooled = self._encode_condition(cond, rot_x)
        null_tokens = self.null_cond_embed.to(tokens.dtype).expand(b, -1, -1)
        null_pooled = self.null_cond_hidden.to(pooled.dtype).expand(b, -1)
        memory = self.norm_cond(torch.cat((tokens, null_tokens), dim=0))
        memory_rotated = RotaryEmbedding.rotate(memory, rot_x)

        time_cond = torch.cat(tuple(time_conds))  # (S·B,)
        film_t, time_tokens = self._time_embedding(time_cond)
        mish_t = F.mish(film_t.unflatten(0, (steps, b)).repeat(1, 2, 1) + torch.cat((pooled, null_pooled)))
        time_memory = self.norm_cond(time_tokens).unflatten(0, (steps, b)).repeat(1, 2, 1, 1)
        time_rotated = RotaryEmbedding.rotate(time_memory, rot_time)

        layers = self.decoder_layers
        frame_weight = self.input_projection.weight[:, self.nfeats :]
        noise_shape = (steps, b, 1, 1)
        return MotionWindow(
            frame_projection=F.linear(cond_frame, frame_weight, self.input_projection.bias).unsqueeze(1),
            memory_kv=tuple(layer.multihead_attn.project_key_value(memory_rotated, memory) for layer in layers),
            time_kv=tuple(layer.multihead_attn.project_key_value(time_rotated, time_memory) for layer in layers),
            films=tuple(layer.films(mish_t) for layer in layers),
            noise_scales=(
                self.sqrt_recip_one_minus_ac[time_cond].view(noise_shape),
                self.sqrt_recip_ac_minus_one[time_cond].view(noise_shape),
            ),
            rot_x=rot_x,
        )

    def denoise_step(self, x: Tensor, window: MotionWindow, step: int) -> tuple[Tensor, Tensor]:
        """The guided call of the window's ``step``-th time step on x (B,L,265): ``forward`` without
        the work :meth:`prepare_window` did."""
        b = x.shape[0]
        h = F.linear(x, self.input_projection.weight[:, : self.nfeats]) + window.frame_projection
        h = h.repeat(2, 1, 1)
        for layer, (cond_k, cond_v), (time_k, time_v), films in zip(
            self.decoder_layers, window.memory_kv, window.time_kv, window.films
        ):
            memory_kv = (torch.cat((cond_k, time_k[step]), dim=1), torch.cat((cond_v, time_v[step]), dim=1))
            step_films = tuple((scale[step], shift[step]) for scale, shift in films)
            h = layer(h, step_films, window.rot_x, memory_kv)
        out = self.final_layer(h)
        conditioned, unconditioned = out[:b], out[b:]
        x_start = unconditioned + (conditioned - unconditioned) * self.guidance_weight
        a, c = (scale[step].to(x.dtype) for scale in window.noise_scales)
        pred_noise = a * x - x_start / c
        return pred_noise, x_start

    def forward(self, x: Tensor, cond_frame: Tensor, cond: Tensor, time_cond: Tensor) -> tuple[Tensor, Tensor]:
        """One guided denoising call (the official ``lmdm`` engine contract).

        Args:
            x: noisy motion x_t, (B, seq_len, nfeats) float.
            cond_frame: motion of the frame before the window, (B, nfeats).
            cond: per-frame condition, (B, seq_len, cond_feature_dim).
            time_cond: diffusion step t per batch row, (B,) int64 in [0, n_train_steps).

        Returns:
            (pred_noise, x_start), each (B, seq_len, nfeats): the guided x0
            prediction x0 = uncond + w·(cond − uncond) and the noise implied by it,
            ε = x_t/√(1−ᾱ_t) − x0/√(1/ᾱ_t − 1).
        """
        return self.denoise_step(x, self.prepare_window(cond_frame, cond, (time_cond,)), 0)


# -- checkpoints ---------------------------------------------------------------


def _state_dict_of(obj: Any) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"LMDM checkpoint must be a dict, got {type(obj).__name__}")
    sd = obj.get("model_state_dict", None)
    if sd is None:
        raise ConfigError(f"LMDM checkpoint has no 'model_state_dict' entry (keys: {sorted(map(str, obj.keys()))[:8]})")
    if not isinstance(sd, Mapping):
        raise ConfigError("LMDM checkpoint 'model_state_dict' is not a dict")
    prefix = "module."
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}


def lmdm_hparams_from_state_dict(sd: Mapping[str, Tensor]) -> dict[str, int]:
    """Constructor kwargs that can be read off a state dict's shapes.

    ``num_heads`` is not recoverable from shapes; the default (8) applies.
    """
    try:
        nfeats, latent = sd["final_layer.weight"].shape
        cond_dim = sd["cond_projection.weight"].shape[1]
        seq_len = sd["null_cond_embed"].shape[1]
        ff = sd["cond_encoder.0.linear1.weight"].shape[0]
    except KeyError as exc:
        raise ConfigError(f"LMDM state dict lacks {exc.args[0]!r}; not an LMDM MotionDecoder checkpoint") from exc
    layers = {k.split(".")[2] for k in sd if k.startswith("seqTransDecoder.stack.")}
    return {
        "nfeats": int(nfeats),
        "seq_len": int(seq_len),
        "latent_dim": int(latent),
        "ff_size": int(ff),
        "num_layers": len(layers),
        "cond_feature_dim": int(cond_dim),
    }


def lmdm_for_state_dict(sd: Mapping[str, Tensor], **overrides: Any) -> MotionDecoder:
    """An un-loaded :class:`MotionDecoder` shaped for ``sd`` (weights not copied)."""
    return MotionDecoder(**{**lmdm_hparams_from_state_dict(sd), **overrides})


def lmdm_from_checkpoint(obj: Mapping[str, Any], **overrides: Any) -> MotionDecoder:
    """Build a :class:`MotionDecoder` from a loaded ``lmdm_*.pth`` dict.

    Reads ``obj['model_state_dict']`` (a ``module.`` prefix is stripped),
    infers the condition width from ``cond_projection.weight`` (and the other
    shape-derived hyperparameters), loads strictly and returns it in eval mode
    on the CPU.

    Raises:
        ConfigError: ``obj`` is not an LMDM checkpoint or its keys/shapes differ.
    """
    sd = _state_dict_of(obj)
    model = lmdm_for_state_dict(sd, **overrides)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"LMDM checkpoint does not match MotionDecoder: {exc}") from exc
    return model.eval()
