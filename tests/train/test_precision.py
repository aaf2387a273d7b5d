"""The perf switches (sim_core/train/precision.py) and the run-length/cadence options, on CPU with small real networks:
gradient accumulation reproduces the one-batch update, bf16 autocast really lowers the network passes, TF32 and
channels_last are accepted (channels_last really changes the memory format), networks.dropout and SiD's train/eval
modes, train.kimg, the "sid" evaluation schedule, and config hashes of existing runs unchanged."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sim_core.core.edm import EDMPrecond
from sim_core.errors import ConfigError
from sim_core.nets.embedding import PositionalEmbedding
from sim_core.nets.mlp import ResidualMLP
from sim_core.testbeds.base import Testbed as BaseTestbed
from sim_core.testbeds.gmm.testbed import GMMTestbed
from sim_core.train.config import PerfConfig, parse_config
from sim_core.train.distributed import DistEnv
from sim_core.train.loop import Distiller, distill
from sim_core.train.precision import autocast, configure_backends, micro_batches, to_memory_format
from sim_core.train.run_dir import read_metrics
from sim_core.train.schedule import sid_eval_due

from numerics import assert_same_training, parameters, steps

torch.set_num_threads(1)


class _Block(nn.Module):
    """A residual conv block that keeps its dropout probability as a float attribute (as NVIDIA's UNetBlock)."""

    def __init__(self, ch: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.conv(nn.functional.dropout(nn.functional.silu(x), p=self.dropout, training=self.training))


class TinyConvNet(nn.Module):
    """A small convolutional raw network with SongUNet's call signature, with both kinds of dropout setting."""

    def __init__(self, channels: int = 3, hidden: int = 8, dropout: float = 0.1):
        super().__init__()
        self.map_noise = PositionalEmbedding(16)
        self.emb = nn.Linear(16, hidden)
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.block = _Block(hidden, dropout)
        self.drop = nn.Dropout(dropout)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        h = self.conv_in(x) + self.emb(self.map_noise(noise_labels).to(x.dtype))[:, :, None, None]
        return self.conv_out(self.drop(self.block(h)))


def _mlp_testbed(label_dim: int = 3) -> BaseTestbed:
    torch.manual_seed(0)
    D = EDMPrecond(ResidualMLP((1, 8, 8), hidden=32, blocks=1, label_dim=label_dim), label_dim=label_dim)
    return BaseTestbed(D, dict(data_shape=[1, 8, 8], label_dim=label_dim))


def _conv_testbed(dropout: float = 0.1) -> BaseTestbed:
    torch.manual_seed(0)
    return BaseTestbed(EDMPrecond(TinyConvNet(dropout=dropout)), dict(data_shape=[3, 8, 8], label_dim=0))


def _raw(method="sim", batch=16, lr=1e-3, dtype="float32", conditional=True, **over) -> dict:
    raw = dict(name="perf", dtype=dtype, testbed=dict(kind="digits", teacher="unused.pt", conditional=conditional),
               method=method if isinstance(method, dict) else dict(name=method),
               optim=dict(batch_size=batch, lr_gen=lr, lr_online=lr),
               train=dict(iterations=3, progress=False))
    raw.update(over)
    return raw


def _distiller(tmp_path, testbed, **raw) -> Distiller:
    return Distiller(parse_config(_raw(**raw)), tmp_path, testbed, evaluator=lambda G, step: {})


def _grads(d: Distiller) -> dict:
    return {f"{net}.{k}": p.grad.clone() for net in ("G", "D_psi") for k, p in getattr(d, net).named_parameters()}


# ---- gradient accumulation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sim", "sid", "di"])
def test_grad_accum_gives_the_one_batch_update(tmp_path, method):
    """grad_accum 1, 2, 4 (micro-batches 16, 8, 4): the same draws, so the same losses, gradients and parameters
    after 3 iterations up to float64 summation order (measured: <= 4e-14 relative)."""
    runs = {}
    for k in (1, 2, 4):
        d = _distiller(tmp_path, _mlp_testbed(), method=method, dtype="float64", perf=dict(grad_accum=k))
        assert [s.stop - s.start for s in d.micro] == [16 // k] * k
        runs[k] = (steps(d, 3), parameters(d), _grads(d))
    losses1, params1, grads1 = runs[1]
    for k in (2, 4):
        losses, params, grads = runs[k]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(losses1), rtol=1e-10, atol=1e-13)
        for name in params1:
            torch.testing.assert_close(params[name], params1[name], rtol=1e-10, atol=1e-13, msg=name)
            # Adam hides a gradient's scale, so compare the gradients too (a missing 1/grad_accum shows here)
            torch.testing.assert_close(grads[name], grads1[name], rtol=1e-9, atol=1e-12, msg=name)
    # The tolerance discriminates: other draws (another seed) move the parameters by far more.
    d = _distiller(tmp_path, _mlp_testbed(), method=method, dtype="float64", seed=1)
    steps(d, 3)
    assert max((p - params1[n]).abs().max().item() for n, p in parameters(d).items()) > 1e-4


def test_grad_accum_skips_the_step_on_a_non_finite_loss(tmp_path):
    d = _distiller(tmp_path, _mlp_testbed(), perf=dict(grad_accum=2), method=dict(name="sim", nonfinite="stop"))
    with torch.no_grad():
        d.D_psi.model.out.bias[0] = float("nan")
    before = parameters(d)
    assert not d.psi_step().isfinite()
    assert d.opt_psi.state == {}  # Adam never stepped
    for name, p in parameters(d).items():
        if name != "D_psi.model.out.bias":
            assert torch.equal(p, before[name]), name


def test_batch_that_does_not_split_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"perf.grad_accum=3 does not divide optim.batch_size=16") as e:
        parse_config(_raw(perf=dict(grad_accum=3)))
    assert "\n" not in str(e.value)
    # 12 splits into 4, but each of 2 processes holds 6: fails before the teacher is read or the run dir made
    cfg = parse_config(_raw(batch=12, perf=dict(grad_accum=4)))
    with pytest.raises(ConfigError, match=r"perf.grad_accum=4 does not divide the per-process batch of 6") as e:
        distill(cfg, tmp_path / "r", dist=DistEnv(rank=0, world_size=2))
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()
    assert [(s.start, s.stop) for s in micro_batches(6, 3)] == [(0, 2), (2, 4), (4, 6)]


# ---- bf16, TF32, channels_last -------------------------------------------------------------------------------

def test_bf16_autocast_lowers_the_network_passes_only(tmp_path):
    tb = _mlp_testbed()
    fp32 = _distiller(tmp_path, tb, method="sim")
    bf16 = _distiller(tmp_path, _mlp_testbed(), method="sim", perf=dict(bf16=True))
    a, b = torch.tensor(steps(fp32, 2)), torch.tensor(steps(bf16, 2))
    assert torch.isfinite(b).all()
    # online losses (~50) agree to bf16 accuracy, but the switch really changed the arithmetic
    torch.testing.assert_close(b[:, 0], a[:, 0], rtol=2e-3, atol=0)
    assert not torch.equal(a[:, 0], b[:, 0]) and not torch.equal(a[:, 1], b[:, 1])
    # Under the context the raw network computes in bf16; the preconditioned output and the loss stay fp32.
    x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 0.7)
    labels = torch.eye(3)[[0, 1, 2, 0]]
    D = bf16.D_teacher
    with autocast(bf16.perf, "cpu"):
        assert torch.is_autocast_enabled("cpu")
        F_x = D.model(x, sigma.log() / 4, class_labels=labels)
        D_x = D(x, sigma, labels)
        loss = bf16.psi_loss(D, x, labels, torch.Generator().manual_seed(0))
    assert F_x.dtype == torch.bfloat16 and D_x.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(D_x, D(x, sigma, labels), rtol=0.05, atol=0.02)
    with autocast(PerfConfig(), "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_tf32_is_accepted_and_sets_the_cuda_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)
    try:
        assert configure_backends(PerfConfig(tf32=True), "cpu") == {}  # TF32 and cuDNN do not exist on CPU
        flags = configure_backends(PerfConfig(tf32=True, cudnn_benchmark=False), "cuda")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        assert flags["torch.backends.cudnn.allow_tf32"] is True
        configure_backends(PerfConfig(), "cuda")  # the reference code's: fp32 everywhere, cudnn.benchmark on
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction) = saved


def test_tf32_on_cpu_changes_nothing(tmp_path):
    a = steps(_distiller(tmp_path, _mlp_testbed()), 2)
    b = steps(_distiller(tmp_path, _mlp_testbed(), perf=dict(tf32=True, cudnn_benchmark=False)), 2)
    assert a == b


def test_channels_last_changes_the_memory_format(tmp_path):
    on, off = PerfConfig(channels_last=True), PerfConfig()
    x = torch.randn(2, 3, 4, 4)
    y = to_memory_format(x, on)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() and torch.equal(x, y)
    assert to_memory_format(x, off) is x
    v = torch.randn(2, 3)
    assert to_memory_format(v, on) is v  # only 4-D tensors have a channels_last layout
    # Through the Distiller, on a convolutional network (dropout 0 so that both runs are deterministic):
    cl = _distiller(tmp_path, _conv_testbed(), conditional=False, networks=dict(dropout=0.0),
                    perf=dict(channels_last=True))
    ref = _distiller(tmp_path, _conv_testbed(), conditional=False, networks=dict(dropout=0.0))
    for net in (cl.D_teacher, cl.G.D, cl.D_psi, cl.G_ema.D):
        w = net.model.conv_in.weight
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert cl._draw()[0].is_contiguous(memory_format=torch.channels_last)
    assert ref.D_psi.model.conv_in.weight.is_contiguous()
    ref._draw()  # keep the two runs' random streams in step
    a, b = torch.tensor(steps(ref, 2)), torch.tensor(steps(cl, 2))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # another memory layout sums convolutions in another order: float precision for the bulk, Adam's bound for the
    # rare element whose gradient is near eps (tests/numerics.py)
    assert_same_training(parameters(cl), parameters(ref), lr=1e-3, steps=2, rtol=1e-4, atol=1e-6,
                         max_outlier_fraction=1e-2)


def test_channels_last_in_float64_is_the_same_update(tmp_path):
    cl = _distiller(tmp_path, _conv_testbed(), conditional=False, networks=dict(dropout=0.0), dtype="float64",
                    perf=dict(channels_last=True))
    ref = _distiller(tmp_path, _conv_testbed(), conditional=False, networks=dict(dropout=0.0), dtype="float64")
    cl._draw()
    ref._draw()
    a, b = torch.tensor(steps(ref, 2)), torch.tensor(steps(cl, 2))
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    for name, p in parameters(ref).items():
        torch.testing.assert_close(parameters(cl)[name], p, rtol=1e-9, atol=1e-11, msg=name)


# ---- dropout and train/eval modes ------------------------------------------------------------------------------

def test_dropout_setting_and_sid_train_eval_modes(tmp_path):
    d = _distiller(tmp_path, _conv_testbed(dropout=0.1), conditional=False, networks=dict(dropout=0.25))
    for net, p in ((d.G, 0.25), (d.D_psi, 0.25), (d.G_ema, 0.25), (d.D_teacher, 0.1)):
        assert net.D.model.block.dropout == p if net in (d.G, d.G_ema) else net.model.block.dropout == p
        assert (net.D if net in (d.G, d.G_ema) else net).model.drop.p == p
    d.psi_step()  # psi-step: online net trains (dropout on), G samples in eval mode
    assert (d.D_psi.training, d.G.training, d.D_teacher.training) == (True, False, False)
    assert all(m.training for m in d.D_psi.modules()) and not any(m.training for m in d.G.modules())
    d.theta_step()  # theta-step: G trains, online net in eval mode with frozen parameters
    assert (d.D_psi.training, d.G.training, d.D_teacher.training) == (False, True, False)
    assert not any(p.requires_grad for p in d.D_psi.parameters())
    assert not d.G_ema.training
    # None keeps the teacher's own value on G and the online network
    d = _distiller(tmp_path, _conv_testbed(dropout=0.1), conditional=False)
    assert d.G.D.model.block.dropout == 0.1 and d.D_psi.model.drop.p == 0.1


def test_dropout_needs_a_network_with_dropout(tmp_path):
    with pytest.raises(ConfigError, match=r"networks.dropout=0.2: .*ResidualMLP.* has no dropout") as e:
        _distiller(tmp_path, _mlp_testbed(), networks=dict(dropout=0.2))
    assert "\n" not in str(e.value)
    steps(_distiller(tmp_path, _mlp_testbed(), networks=dict(dropout=0.0)), 1)  # 0 is what the MLP has
    with pytest.raises(ConfigError, match=r"networks.dropout: must lie in \[0, 1\)"):
        parse_config(_raw(networks=dict(dropout=1.0)))


# ---- run length, evaluation cadence, hashes ---------------------------------------------------------------------

def test_kimg_resolves_to_iterations():
    def iters(kimg, batch):
        return parse_config(_raw(batch=batch, train=dict(kimg=kimg))).train.iterations
    assert iters(1.0, 256) == 4 and iters(0.512, 256) == 2 and iters(0.513, 256) == 3  # ceil(kimg * 1000 / batch)
    assert iters(500_000, 256) == math.ceil(500_000_000 / 256)  # SiD's 500 Mimg: 1,953,125 iterations
    cfg = parse_config(_raw(train=dict(kimg=0.1)))
    again = parse_config(cfg.to_dict())  # config.yaml holds both, consistent
    assert again.train.iterations == 7 and again.hash() == cfg.hash()
    assert cfg.hash() != parse_config(_raw(train=dict(iterations=7))).hash()
    with pytest.raises(ConfigError, match="set iterations or kimg"):
        parse_config(_raw(train=dict(log_every=1)))
    with pytest.raises(ConfigError, match=r"train.iterations=5 and train.kimg=0.1 \(= 7 iterations at batch 16\) disagree"):
        parse_config(_raw(train=dict(kimg=0.1, iterations=5)))


def _sid_marks(up_to: int) -> list[int]:
    """SiD's marks written out: 100k, 200k, ..., 1M, then 1.5M, 2M, ..."""
    early = list(range(100_000, 1_000_001, 100_000))
    return early + list(range(1_500_000, up_to + 1, 500_000))


@pytest.mark.parametrize("batch", [50_000, 30_000, 256])
def test_sid_schedule_evaluates_at_each_mark_once(batch):
    steps = math.ceil(3_200_000 / batch)
    due = [s for s in range(1, steps + 1) if sid_eval_due((s - 1) * batch, s * batch)]
    expected = [math.ceil(m / batch) for m in _sid_marks(steps * batch)]
    assert due == expected
    if batch == 50_000:  # 100, 200, ..., 1000 kimg, then 1500, 2000, 2500, 3000 kimg
        assert [s * batch // 1000 for s in due] == [100 * i for i in range(1, 11)] + [1500, 2000, 2500, 3000]
    assert sid_eval_due(99_999, 100_000) and not sid_eval_due(100_000, 100_001) and not sid_eval_due(0, 99_999)
    assert not sid_eval_due(1_000_000, 1_499_999) and sid_eval_due(1_499_999, 1_500_000)


def test_sid_schedule_in_the_loop(tmp_path):
    """A real run at 50,000 images per step: evaluations and EMA snapshots at 100, 200, ..., 1000, 1500 kimg and at
    the end (1550 kimg = 31 iterations), plus the evaluation at initialisation."""
    from sim_core.testbeds.gmm.mixture import ring
    torch.manual_seed(0)
    D = EDMPrecond(ResidualMLP((2,), hidden=4, blocks=1, emb_dim=4))
    tb = GMMTestbed(D, dict(data_shape=[2], label_dim=0, testbed_spec=ring().spec()))
    raw = dict(name="sid_cadence", testbed=dict(kind="gmm", teacher="unused.pt"), optim=dict(batch_size=50_000),
               train=dict(kimg=1550, eval_schedule="sid", eval_every=5, log_every=1000, progress=False),
               eval=dict(num_samples=200, batch_size=200))
    cfg = parse_config(raw)
    assert cfg.train.iterations == 31
    d = Distiller(cfg, tmp_path, tb)
    assert d.run()["status"] == "finished"
    expected = list(range(2, 21, 2)) + [30, 31]
    evals = [r["step"] for r in read_metrics(tmp_path) if "eval/fd" in r]
    assert evals == [0] + expected  # eval_every is not used by the "sid" schedule
    assert sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "snapshots").glob("ema-*.pt")) == expected


def test_config_hash_is_pinned_and_only_later_fields_at_default_stay_out():
    """Run directories are named by RunConfig.hash(): these values were computed when the methods' non-finite policies
    came (after the typed method and testbed sections of the layered layout) and must not move. Presentation-only fields never count; a field added later
    (marked HASHED_UNLESS_DEFAULT) counts only once set to something other than its default."""
    from pydantic import Field

    from sim_core.train.config import HASHED_UNLESS_DEFAULT, RunConfig
    a = dict(name="fixed", testbed=dict(kind="gmm", teacher="teacher_gmm.pt"), train=dict(iterations=100))
    b = dict(name="fixed_full", scale="smoke", seed=3, testbed=dict(kind="digits", teacher="t.pt", conditional=True),
             method=dict(name="sid", alpha=1.0), optim=dict(batch_size=64, lr_gen=1e-4, lr_online=1e-4),
             train=dict(iterations=20, log_every=5, eval_every=10, checkpoint_every=0, progress=False),
             eval=dict(num_samples=500, batch_size=500))
    assert parse_config(a).hash() == "75498e479270f95b" and parse_config(b).hash() == "6c09a95d04ad25ca"
    assert parse_config(dict(a, threads=2, train=dict(iterations=100, progress=False))).hash() == "75498e479270f95b"
    changed = [dict(a, perf=dict(grad_accum=2)), dict(a, perf=dict(bf16=True)), dict(a, networks=dict(dropout=0.0)),
               dict(a, train=dict(iterations=100, eval_schedule="sid")), dict(a, method=dict(name="sim", space="score"))]
    assert len({parse_config(c).hash() for c in changed} | {"75498e479270f95b"}) == len(changed) + 1

    class Later(RunConfig):  # the schema after a field is added
        new_switch: int = Field(0, json_schema_extra=HASHED_UNLESS_DEFAULT)
    assert Later.model_validate(a).hash() == "75498e479270f95b"
    assert Later.model_validate(dict(a, new_switch=1)).hash() != "75498e479270f95b"
