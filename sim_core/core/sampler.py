"""EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1; NVlabs/edm generate.py edm_sampler with
S_churn = 0): Karras schedule with rho = 7, sigma in [0.002, 80], 2N - 1 network evaluations for N steps,
computed in float64 around a network that may run in float32."""
from __future__ import annotations

import torch

from sim_core.core.edm import karras_sigmas


@torch.no_grad()
def heun_sampler(D, latents: torch.Tensor, cond=None, num_steps: int = 18, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, net_dtype=torch.float32) -> torch.Tensor:
    """latents ~ N(0, I); returns x0 samples. num_steps = 18 gives 35 NFE (EDM's CIFAR-10 setting)."""
    t_steps = karras_sigmas(num_steps, sigma_min, sigma_max, rho).to(latents.device)
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])  # t_N = 0

    def denoise(x, t):
        return D(x.to(net_dtype), t.to(net_dtype).expand(x.shape[0]), cond).to(torch.float64)

    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        d_cur = (x_cur - denoise(x_cur, t_cur)) / t_cur          # dx/dt of the probability-flow ODE
        x_next = x_cur + (t_next - t_cur) * d_cur                # Euler step
        if i < num_steps - 1:                                    # 2nd-order correction except at t -> 0
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(latents.dtype)


def nfe(num_steps: int) -> int:
    """Network evaluations of the Heun sampler with num_steps steps."""
    return 2 * num_steps - 1
