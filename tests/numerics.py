"""Comparing two training runs whose only difference is the order of float summations (process count, batch
split, memory layout): what is true on any CPU.

Adam with beta1 = 0 (Table 5) divides each gradient by the root of its own running second moment, so its step
is about ``lr * sign(g)`` whatever the gradient's size. An element whose gradient is near Adam's eps (1e-8) at the
first step, where the second moment is that gradient alone, turns a rounding-level difference of the gradient
into a difference of a sizeable fraction of ``lr`` (measured: g = 1.04e-8 vs 1.18e-8 in a 1- and a 2-process
float32 run, steps 0.51 lr vs 0.54 lr). Such elements are rare; the bulk of the parameters agrees to float
precision. In float64 the same runs agree to ~1e-14.
"""
from __future__ import annotations

import math

import torch


def adam_drift_bound(lr: float, steps: int, beta2: float = 0.999) -> float:
    """The most two copies of one parameter can drift apart in ``steps`` steps of Adam with beta1 = 0.

    With beta1 = 0, torch's Adam steps by lr * g_t / (sqrt(v_t / (1 - beta2^t)) + eps) with
    v_t >= (1 - beta2) g_t^2, so a single step is at most lr * sqrt((1 - beta2^t) / (1 - beta2)) whatever the
    gradient; two runs differ by at most twice the sum. It holds for the EMA too (a convex combination)."""
    return 2 * lr * sum(math.sqrt((1 - beta2 ** t) / (1 - beta2)) for t in range(1, steps + 1))


def assert_same_training(got: dict, expected: dict, lr: float, steps: int, beta2: float = 0.999,
                         rtol: float = 1e-4, atol: float = 1e-5, max_outlier_fraction: float = 1e-3) -> None:
    """Float32 runs that differ only in summation order: at most ``max_outlier_fraction`` of all elements lie
    outside float tolerance (rtol, atol), and none further apart than :func:`adam_drift_bound`."""
    assert got.keys() == expected.keys()
    bound = adam_drift_bound(lr, steps, beta2)
    outliers = total = 0
    for k, e in expected.items():
        g = got[k]
        assert g.shape == e.shape, k
        diff = (g.double() - e.double()).abs()
        outliers += int((diff > atol + rtol * e.double().abs()).sum())
        total += e.numel()
        assert diff.max().item() <= bound, f"{k}: {diff.max().item():.3g} exceeds Adam's drift bound {bound:.3g}"
    assert outliers <= max_outlier_fraction * total, f"{outliers} of {total} elements outside float tolerance"


def flat_state(state: dict, nets=("G", "G_ema", "D_psi")) -> dict:
    """The named networks' tensors of a checkpoint as one dict (net.key -> tensor)."""
    return {f"{net}.{k}": v for net in nets for k, v in state[net].items() if torch.is_tensor(v)}


def steps(d, n: int) -> list[tuple[float, float]]:
    """n iterations of a Distiller (psi-step, then theta-step), their losses."""
    return [(d.psi_step().item(), d.theta_step().item()) for _ in range(n)]


def parameters(d) -> dict:
    """A copy of the trained networks' parameters (net.name -> tensor)."""
    return {f"{net}.{k}": p.detach().clone() for net in ("G", "D_psi") for k, p in getattr(d, net).named_parameters()}


def assert_same_weights(run_a, run_b) -> None:
    """The final checkpoints of two run directories hold bitwise the same networks."""
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)
    for net in ("G", "G_ema", "D_psi"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
