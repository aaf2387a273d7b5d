"""The toy text-to-image teacher: a small diffusers PixArtTransformer2DModel trained here on the digits' latents with
PixArt's own objective (epsilon prediction at a uniform DDPM timestep, its linear beta schedule), so that SIM's EDM
wrapper (edm_pixart.py) applies to it unchanged. Captions come from the training templates, with caption dropout to
the null prompt for classifier-free guidance. Written with save_pretrained into one folder, atomically."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from sim_core.files import atomic_directory, atomic_write_json
from sim_core.testbeds.t2i.cond import TextCond
from sim_core.testbeds.t2i.edm_pixart import BETA_END, BETA_START, M
from sim_core.testbeds.t2i.text import MAX_TOKENS, TextEncoder
from sim_core.testbeds.t2i.toy import NULL_PROMPT, TRAIN_TEMPLATES, digit_latents, prompt

# The toy DiT: PixArt's blocks at 4 x 4 x 4 latents, one token per latent pixel (~320 k parameters)
TOY_DIT = dict(sample_size=4, patch_size=1, num_layers=4, num_attention_heads=4, attention_head_dim=16,
               cross_attention_dim=64, caption_channels=32, in_channels=4, out_channels=4, attention_bias=True,
               activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
               norm_elementwise_affine=False, norm_eps=1e-6)
CAPTION_DROPOUT = 0.1  # PixArt-alpha trains with 10% caption dropout (its config: class_dropout_prob 0.1)


def alphas_cumprod(m: int = M) -> torch.Tensor:
    """PixArt's DDPM schedule: betas linear from 1e-4 to 0.02 over 1000 steps (float64)."""
    betas = torch.linspace(BETA_START, BETA_END, m, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def ddpm_loss(net, x0: torch.Tensor, cond: TextCond, t: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor):
    """|| eps_hat(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps ||^2, mean over everything (PixArt's loss)."""
    a = abar[t].to(x0.dtype).reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = net(x_t, encoder_hidden_states=cond.states, timestep=t, encoder_attention_mask=cond.mask,
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    return (out[:, :x0.shape[1]] - eps).square().mean()


def train_toy_teacher(out_dir, t5_dir, iterations: int = 3000, batch_size: int = 128, lr: float = 1e-3,
                      seed: int = 0, caption_dropout: float = CAPTION_DROPOUT, dit: dict | None = None,
                      max_tokens: int = MAX_TOKENS, log_every: int = 100) -> dict:
    """Train and write ``out_dir/transformer`` (save_pretrained) and ``out_dir/teacher.json``. The training prompts
    are encoded once (4 templates x 10 digits, and the null prompt) to ``max_tokens``. Adam at ``lr`` with a cosine
    decay to 0 (the toy's choice: PixArt's own schedule is a constant lr after warm-up over far longer training)."""
    from diffusers import PixArtTransformer2DModel
    text = TextEncoder.from_folders(Path(t5_dir) / "tokenizer", Path(t5_dir) / "text_encoder", max_length=max_tokens)
    prompts = [prompt(d, t) for d in range(10) for t in TRAIN_TEMPLATES] + [NULL_PROMPT]
    table = text(prompts)
    null = len(prompts) - 1
    x_all, labels = digit_latents()
    cfg = dict(TOY_DIT, **(dit or {}), caption_channels=table.states.shape[-1])
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = PixArtTransformer2DModel(**cfg).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    abar = alphas_cumprod()
    curve, t0 = [], time.time()
    for it in range(1, iterations + 1):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (it - 1) / iterations))
        idx = torch.randint(0, len(x_all), (batch_size,), generator=g)
        which = labels[idx] * len(TRAIN_TEMPLATES) + torch.randint(0, len(TRAIN_TEMPLATES), (batch_size,), generator=g)
        which = torch.where(torch.rand(batch_size, generator=g) < caption_dropout, torch.full_like(which, null), which)
        t = torch.randint(0, M, (batch_size,), generator=g)
        eps = torch.randn(x_all[idx].shape, generator=g)
        loss = ddpm_loss(net, x_all[idx], table[which], t, eps, abar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % log_every == 0 or it == 1:
            curve.append({"iteration": it, "loss": round(loss.item(), 6)})
    meta = {"kind": "toy_pixart_teacher", "iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed,
            "caption_dropout": caption_dropout, "max_tokens": max_tokens, "dit": cfg, "prompts": prompts[:-1],
            "null_prompt": NULL_PROMPT,
            "loss_curve": curve, "seconds": round(time.time() - t0, 1)}
    with atomic_directory(out_dir) as tmp:
        net.eval().save_pretrained(tmp / "transformer")
        atomic_write_json(tmp / "teacher.json", meta)
    return meta


@torch.no_grad()
def sample_teacher(net, cond: TextCond, null: TextCond, steps: int = 20, guidance: float = 4.5,
                   generator: torch.Generator | None = None, shape=(4, 4, 4)) -> torch.Tensor:
    """The teacher's multi-step samples as PixArt's pipeline draws them: DPM-Solver++ (diffusers'
    DPMSolverMultistepScheduler on PixArt's linear betas) with classifier-free guidance
    eps = eps(null) + guidance (eps(text) - eps(null)); ``null`` is one null-prompt conditioning (batch 1)."""
    from diffusers import DPMSolverMultistepScheduler
    sched = DPMSolverMultistepScheduler(num_train_timesteps=M, beta_start=BETA_START, beta_end=BETA_END,
                                        beta_schedule="linear")
    sched.set_timesteps(steps)
    n = len(cond)
    x = torch.randn((n, *shape), generator=generator).to(cond.states.device, cond.states.dtype) * sched.init_noise_sigma
    both = TextCond(torch.cat([null.states.expand(n, -1, -1), cond.states]),
                    torch.cat([null.mask.expand(n, -1), cond.mask]))
    kw = dict(encoder_hidden_states=both.states, encoder_attention_mask=both.mask,
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    for t in sched.timesteps:
        out = net(torch.cat([x, x]), timestep=t.expand(2 * n), **kw)[0][:, :shape[0]]
        eps_null, eps_text = out.chunk(2)
        x = sched.step(eps_null + guidance * (eps_text - eps_null), t, x, return_dict=False)[0]
    return x
