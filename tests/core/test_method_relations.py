"""Relations between the generator losses of SIM, SiD and Diff-Instruct, and where their gradients flow.

Small random EDM-preconditioned networks in float64 stand in for the teacher D_q and the online network D_psi
(parameters frozen, as in the theta-step); a tiny MLP generator provides theta. Every check compares the
project's loss against a hand-written formula on the same x0 and the same NoiseDraw.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from baselines.diff_instruct import DILoss
from baselines.sid import SiDLoss
from sim_core.core.distances import build_distance
from sim_core.core.edm import EDMPrecond
from sim_core.core.losses import NoiseDraw, PsiLoss, per_sample_dot
from sim_core.core.sim_loss import SIMLoss
from sim_core.core.time_dists import build_time_distribution
from sim_core.core.weightings import lambda_edm
from sim_core.nets.mlp import ResidualMLP

DT = torch.float64
B = 16
Z_DIM = 5
SHAPES = [(2,), (1, 4, 4)]
TD = build_time_distribution("p_sim")  # unused by .loss(): the draw is given explicitly


def tight(a, b, **kw):
    torch.testing.assert_close(a, b, rtol=kw.get("rtol", 1e-10), atol=kw.get("atol", 1e-12))


class Generator(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.net = nn.Sequential(nn.Linear(Z_DIM, 32), nn.SiLU(), nn.Linear(32, math.prod(shape)))

    def forward(self, z):
        return self.net(z).reshape(z.shape[0], *self.shape)


def build(shape, seed=0):
    """(teacher, fake, generator, z, draw) with frozen teacher/fake, trainable generator, per-sample sigma."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = EDMPrecond(ResidualMLP(shape, hidden=32, blocks=2, emb_dim=16)).to(DT).requires_grad_(False)
        fake = EDMPrecond(ResidualMLP(shape, hidden=32, blocks=2, emb_dim=16)).to(DT).requires_grad_(False)
        gen = Generator(shape).to(DT)
        z = torch.randn(B, Z_DIM, dtype=DT)
        sigma = torch.exp(torch.randn(B, dtype=DT) - 0.5)  # spread over roughly [0.1, 5]
        eps = torch.randn(B, *shape, dtype=DT)
    return teacher, fake, gen, z, NoiseDraw(sigma=sigma, eps=eps)


def gen_grad(gen, loss_fn, z):
    """Per-sample loss and the gradient of its batch mean w.r.t. the generator's parameters (flattened)."""
    L = loss_fn(gen(z))
    g = torch.autograd.grad(L.mean(), list(gen.parameters()))
    return L.detach(), torch.cat([x.flatten() for x in g])


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------ SIM(L2) == 2 x SiD(alpha = 1)
@pytest.mark.parametrize("weighting", ["sidwgt", "nowgt"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sim_l2_is_twice_sid_alpha1(shape, weighting):
    teacher, fake, gen, z, draw = build(shape)
    sim = SIMLoss(build_distance("l2"), TD, weighting=weighting)
    sid = SiDLoss(TD, weighting=weighting, alpha=1.0)
    L_sim, g_sim = gen_grad(gen, lambda x0: sim.loss(x0, None, teacher, fake, draw), z)
    L_sid, g_sid = gen_grad(gen, lambda x0: sid.loss(x0, None, teacher, fake, draw), z)
    assert g_sid.norm() > 1e-4 and L_sid.abs().max() > 1e-4
    tight(L_sim, 2 * L_sid)  # d'(y) = 2y: SIM-L2 = -2 w y^T (D_psi - x0), SiD(1) = w Delta^T (D_psi - x0), Delta = -y
    tight(g_sim, 2 * g_sid)


# ------------------------------------------------------------------ SiD with general alpha
@pytest.mark.parametrize("alpha", [1.2, 0.5, 2.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sid_general_alpha_formula(shape, alpha):
    teacher, fake, gen, z, draw = build(shape, seed=1)
    sid = SiDLoss(TD, weighting="sidwgt", alpha=alpha)

    def by_hand(x0):
        x_t = x0 + draw.sigma.reshape(-1, *[1] * len(shape)) * draw.eps
        D_q, D_psi = teacher(x_t, draw.sigma), fake(x_t, draw.sigma)
        Delta = D_q - D_psi
        w = 1.0 / (x0 - D_q).abs().reshape(B, -1).mean(1).clamp_min(1e-5).detach()
        return w * (per_sample_dot(Delta, D_psi - x0) + (1 - alpha) * Delta.pow(2).reshape(B, -1).sum(1))

    L_sid, g_sid = gen_grad(gen, lambda x0: sid.loss(x0, None, teacher, fake, draw), z)
    L_hand, g_hand = gen_grad(gen, by_hand, z)
    tight(L_sid, L_hand)
    tight(g_sid, g_hand)
    if alpha != 1.0:  # the (1 - alpha)||Delta||^2 term matters: alpha = 1 differs
        _, g_one = gen_grad(gen, lambda x0: SiDLoss(TD, "sidwgt", alpha=1.0).loss(x0, None, teacher, fake, draw), z)
        assert rel(g_one, g_sid) > 1e-3


# ------------------------------------------------------------------ sidwgt normaliser is stop-gradient
@pytest.mark.parametrize("method", ["sid", "sim_pseudo_huber"])
def test_sidwgt_is_stop_gradient(method):
    shape = (1, 4, 4)
    teacher, fake, gen, z, draw = build(shape, seed=2)

    def make(weighting):
        if method == "sid":
            return SiDLoss(TD, weighting=weighting, alpha=1.2)
        return SIMLoss(build_distance("pseudo_huber", c=0.1), TD, weighting=weighting)

    def normaliser(x0, keep_graph):
        x_t = draw.x_t(x0)
        m = (x0 - teacher(x_t, draw.sigma)).abs().reshape(B, -1).mean(1)
        return 1.0 / (m if keep_graph else m.detach())

    with_w, without_w = make("sidwgt"), make("nowgt")
    L_w, g_w = gen_grad(gen, lambda x0: with_w.loss(x0, None, teacher, fake, draw), z)
    L_sg, g_sg = gen_grad(gen, lambda x0: normaliser(x0, False) * without_w.loss(x0, None, teacher, fake, draw), z)
    tight(L_w, L_sg)
    tight(g_w, g_sg)
    # Contrast: letting gradient through the normaliser gives a different update.
    _, g_full = gen_grad(gen, lambda x0: normaliser(x0, True) * without_w.loss(x0, None, teacher, fake, draw), z)
    assert rel(g_full, g_w) > 1e-3


# ------------------------------------------------------------------ Diff-Instruct: gradient only through x0
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_diff_instruct_gradient_only_through_x0(shape):
    teacher, fake, gen, z, draw = build(shape, seed=3)
    teacher.requires_grad_(True)
    fake.requires_grad_(True)  # even with trainable parameters, DI must not reach the networks
    x0 = gen(z).detach().requires_grad_(True)
    L = DILoss(TD, weighting="nowgt").loss(x0, None, teacher, fake, draw)
    (g_x0,) = torch.autograd.grad(L.sum(), x0, retain_graph=True)
    with torch.no_grad():
        x_t = draw.x_t(x0)
        expected = fake(x_t, draw.sigma) - teacher(x_t, draw.sigma)
    torch.testing.assert_close(g_x0, expected, rtol=0, atol=0)  # exactly D_psi(x_t) - D_q(x_t), weight 1
    tight(L.detach(), per_sample_dot(expected, x0.detach()))
    L.sum().backward()
    assert all(p.grad is None for p in list(teacher.parameters()) + list(fake.parameters()))

    # Contrast: SiD(alpha=1)'s explicit x0 term has the same gradient D_psi - D_q, but SiD and SIM also
    # differentiate through x_t into both networks, so their x0-gradients differ from DI's.
    teacher.requires_grad_(False)
    fake.requires_grad_(False)
    for loss, factor in ((SiDLoss(TD, "nowgt", alpha=1.0), 1.0), (SIMLoss(build_distance("l2"), TD, "nowgt"), 2.0)):
        x0 = gen(z).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss.loss(x0, None, teacher, fake, draw).sum(), x0)
        assert rel(g, factor * expected) > 0.01


# ------------------------------------------------------------------ SIM: gradient through x_t everywhere
def linear_denoiser(M, c):
    return lambda x, sigma, class_labels=None: x @ M.T + c


def test_sim_detach_direction_exact_difference():
    """Linear denoisers D_q = Mq x + cq, D_psi = Mpsi x + cpsi; pseudo-Huber u = y / r, r = sqrt(|y|^2 + c^2).
    Per sample L = -u(y)^T v, y = D_psi(x_t) - D_q(x_t), v = D_psi(x_t) - x0, x_t = x0 + t eps. Then
        dL/dx0 = -(Mpsi - Mq)^T J_u v  -  (Mpsi - I)^T u,   J_u = (I - u u^T) / r,
    where the first term is the path inside d'(y) (through both networks) and the second the path through
    D_psi(x_t) and the explicit x0. detach_direction=True must keep exactly the second term."""
    g = torch.Generator().manual_seed(4)
    n, dim, c = 32, 4, 0.1
    Mq, Mpsi = torch.randn(dim, dim, generator=g, dtype=DT) * 0.5, torch.randn(dim, dim, generator=g, dtype=DT) * 0.5
    cq, cpsi = torch.randn(dim, generator=g, dtype=DT), torch.randn(dim, generator=g, dtype=DT)
    x0_val = torch.randn(n, dim, generator=g, dtype=DT)
    draw = NoiseDraw(sigma=torch.exp(torch.randn(n, generator=g, dtype=DT)), eps=torch.randn(n, dim, generator=g, dtype=DT))
    D_q, D_psi = linear_denoiser(Mq, cq), linear_denoiser(Mpsi, cpsi)
    dist = build_distance("pseudo_huber", c=c)

    grads = {}
    for detach in (False, True):
        x0 = x0_val.clone().requires_grad_(True)
        L = SIMLoss(dist, TD, "nowgt", detach_direction=detach).loss(x0, None, D_q, D_psi, draw)
        (grads[detach],) = torch.autograd.grad(L.sum(), x0)

    x_t = x0_val + draw.sigma[:, None] * draw.eps
    y = D_psi(x_t, None) - D_q(x_t, None)
    v = D_psi(x_t, None) - x0_val
    r = (y.pow(2).sum(1, keepdim=True) + c * c).sqrt()
    u = y / r
    J_u_v = (v - u * (u * v).sum(1, keepdim=True)) / r           # J_u v, J_u symmetric
    inside = -J_u_v @ (Mpsi - Mq)                                 # rows: -(Mpsi - Mq)^T J_u v
    outside = -u @ (Mpsi - torch.eye(dim, dtype=DT))              # rows: -(Mpsi - I)^T u
    tight(grads[True], outside)
    tight(grads[False], outside + inside)
    tight(grads[False] - grads[True], inside)
    assert inside.norm() > 0.1 * outside.norm()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sim_detach_direction_matters_on_networks(shape):
    teacher, fake, gen, z, draw = build(shape, seed=5)
    dist = build_distance("pseudo_huber", c=1e-3)

    def sim_grad(detach):
        return gen_grad(gen, lambda x0: SIMLoss(dist, TD, "nowgt", detach_direction=detach)
                        .loss(x0, None, teacher, fake, draw), z)

    (L_f, g_f), (L_t, g_t) = sim_grad(False), sim_grad(True)
    tight(L_f, L_t)  # same loss value, different gradient
    assert rel(g_t, g_f) > 0.01

    # And the difference is exactly the gradient through d'(y) alone (v held fixed).
    def inside_only(x0):
        x_t = draw.x_t(x0)
        D_q, D_psi = teacher(x_t, draw.sigma), fake(x_t, draw.sigma)
        return -per_sample_dot(dist.grad(D_psi - D_q), (D_psi - x0).detach())

    _, g_in = gen_grad(gen, inside_only, z)
    tight(g_f - g_t, g_in, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------ online (psi-step) loss
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_online_loss_does_not_reach_generator(shape):
    _, fake, gen, z, _ = build(shape, seed=6)
    fake.requires_grad_(True)
    online = PsiLoss(build_time_distribution("p_edm"))
    x0 = gen(z)
    rng = torch.Generator().manual_seed(11)
    L = online(fake, x0, None, rng)
    (g_x0,) = torch.autograd.grad(L.mean(), x0, allow_unused=True, retain_graph=True)
    assert g_x0 is None
    L.mean().backward()
    assert all(p.grad is None for p in gen.parameters())
    fake_grads = [p.grad for p in fake.parameters() if p.grad is not None]
    assert fake_grads and sum(gr.norm() for gr in fake_grads) > 0

    # Value: lambda_EDM(t) ||D_psi(x0 + t eps) - x0||^2 with the same draws.
    rng = torch.Generator().manual_seed(11)
    sigma = online.time_dist.sample(B, rng, dtype=DT)
    eps = torch.randn(x0.shape, generator=rng, dtype=DT)
    x0d = x0.detach()
    with torch.no_grad():
        s = sigma.reshape(-1, *[1] * len(shape))
        expected = lambda_edm(sigma) * (fake(x0d + s * eps, sigma) - x0d).pow(2).reshape(B, -1).sum(1)
    tight(L.detach(), expected)


# ------------------------------------------------------------------ Diff-Instruct: dropout as DI's gloss
def test_diff_instruct_denoisers_in_train_mode_share_dropout_masks():
    """DI's gloss runs the teacher and the online network in train mode with the same dropout masks: an online
    network identical to its teacher then gives exactly zero loss and gradient, although dropout is active (the
    outputs differ from eval mode, and from calls with independent masks). The modes are restored after."""
    import copy

    from sim_core.nets.songunet import SongUNet
    torch.manual_seed(0)
    teacher = EDMPrecond(SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=8,
                                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.5)).double()
    for p in teacher.parameters():  # EDM's zero-initialised output layers would hide dropout: randomise all
        torch.nn.init.normal_(p, std=0.2)
    teacher.eval().requires_grad_(False)
    fake = copy.deepcopy(teacher).requires_grad_(False)
    x0 = torch.randn(4, 3, 8, 8, dtype=DT, requires_grad=True)
    draw = NoiseDraw(torch.full((4,), 1.5, dtype=DT), torch.randn(4, 3, 8, 8, dtype=DT))
    L = DILoss(TD).loss(x0, None, teacher, fake, draw)
    (g,) = torch.autograd.grad(L.sum(), x0)
    assert torch.count_nonzero(L) == 0 and torch.count_nonzero(g) == 0
    assert not teacher.training and not fake.training and not any(m.training for m in fake.modules())

    loss = DILoss(TD)
    with torch.no_grad():
        x_t = draw.x_t(x0)
        D_q, _ = loss.denoise(teacher, fake, x_t, draw.sigma, None)
        D_eval = teacher(x_t, draw.sigma)
        fake.train()  # independent masks: two train-mode calls without restoring the RNG state
        D_a, D_b = teacher.train()(x_t, draw.sigma), fake(x_t, draw.sigma)
        teacher.eval(), fake.eval()
    assert (D_q - D_eval).abs().max() > 1e-3 and (D_a - D_b).abs().max() > 1e-3

    # the switch off: eval mode (no dropout), as SiD's theta-step
    D_q_eval, D_psi_eval = DILoss(TD, train_mode_denoisers=False).denoise(teacher, fake, x_t, draw.sigma, None)
    torch.testing.assert_close(D_q_eval, D_eval, rtol=0, atol=0)
