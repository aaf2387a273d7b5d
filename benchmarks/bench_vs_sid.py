"""CPU time of one iteration of the harness's loop against SiD's official loop, same network and batch, timed
interleaved in one process. Prints the ratio (harness / SiD) per method of the harness.

    python benchmarks/bench_vs_sid.py --sid PATH/TO/SiD [--net small] [--batch 8] [--rounds 12] [--block 4]

PATH is a checkout of https://github.com/mingyuanzhou/SiD (never part of this project). SiD's side runs SiD's own
code: its networks (training/networks.py), its loss (training/sid_loss.py) and the statements of the `while True:`
body of `training_loop` (training/sid_training_loop.py) up to `cur_nimg += batch_size`, read from the checkout's
source with `ast` and executed as they are; what follows them there is the once-per-tick maintenance. Two things
differ from a SiD run, both in SiD's favour: its modules are not wrapped in DistributedDataParallel (one process;
the harness does not wrap either), and its dataset iterator hands out a batch made once (the harness reads no
data). The harness's side is `Distiller.iteration`, the body of `Distiller.run`'s loop (the non-finite policy,
the EMA, the schedule's records). Both: the same SongUNet architecture with the same weights (ours is loaded
from SiD's state dict), Adam with betas (0, 0.999), dropout 0.13, AugmentPipe p = 0.12 on the online step, fp32,
one torch thread.

Each method of the harness is paired with SiD's loop: rounds of one block per side, the order flipping each round;
a block is one untimed iteration (so that the side's own networks are in the caches) and --block timed ones. Each
round's ratio is the harness block's CPU time per iteration over SiD's block's, and the median over rounds is
reported with its quartiles (a shared machine's speed drifts by more than the difference measured).
"""
from __future__ import annotations

import argparse
import ast
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_iterations, beside this file
from bench_iterations import make_distiller  # noqa: E402

from sim_core.core.edm import EDMPrecond  # noqa: E402
from sim_core.nets import build_network  # noqa: E402
from sim_core.nets.songunet import cifar10_ddpmpp_kwargs  # noqa: E402

NETS = {  # SongUNet sizes: EDM's CIFAR-10 ddpmpp and two smaller ones of the same code for a CPU
    "tiny": dict(img_resolution=8, model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4]),
    "small": dict(img_resolution=16, model_channels=32, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]),
    "cifar10": {},
}
AUGMENT = dict(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)  # sid_train.py


def sid_loop_body(sid: Path):
    """The statements of training_loop's `while True:` body up to `cur_nimg += batch_size`, compiled."""
    src = (sid / "training" / "sid_training_loop.py").read_text()
    fn = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef) and n.name == "training_loop")
    loop = next(n for n in ast.walk(fn) if isinstance(n, ast.While) and isinstance(n.test, ast.Constant)
                and n.test.value is True)
    body = []
    for stmt in loop.body:
        body.append(stmt)
        if isinstance(stmt, ast.AugAssign) and getattr(stmt.target, "id", None) == "cur_nimg":
            break
    else:
        sys.exit(f"bench_vs_sid: no `cur_nimg += batch_size` in the training loop of {sid}: another SiD version?")
    return compile(ast.Module(body=body, type_ignores=[]), str(sid / "training" / "sid_training_loop.py"), "exec")


def sid_namespace(sid: Path, net_kwargs: dict, batch: int, lr: float, method_alpha: float) -> dict:
    """The local variables the loop body reads, built as training_loop builds them (one process)."""
    sys.path.insert(0, str(sid))
    import dnnlib  # noqa: F401  (SiD's, from the checkout)
    from torch_utils import misc, training_stats
    from training.augment import AugmentPipe
    from training.networks import EDMPrecond as SiDPrecond
    from training.sid_loss import SID_EDMLoss
    kw = {k: v for k, v in net_kwargs.items() if k not in ("img_resolution", "in_channels", "out_channels",
                                                          "label_dim")}
    torch.manual_seed(0)
    true_score = SiDPrecond(net_kwargs["img_resolution"], 3, label_dim=0, model_type="SongUNet", **kw)
    true_score.eval().requires_grad_(False)
    fake_score = copy.deepcopy(true_score).train().requires_grad_(True)
    G = copy.deepcopy(true_score).train().requires_grad_(True)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    images = torch.randint(0, 256, (batch, 3, net_kwargs["img_resolution"], net_kwargs["img_resolution"]),
                           dtype=torch.uint8)
    labels = torch.zeros(batch, 0)

    def dataset():
        while True:
            yield images, labels
    return dict(torch=torch, misc=misc, training_stats=training_stats, device=torch.device("cpu"),
                fake_score=fake_score, fake_score_ddp=fake_score, G=G, G_ddp=G, G_ema=G_ema, true_score=true_score,
                fake_score_optimizer=torch.optim.Adam(fake_score.parameters(), lr=lr, betas=[0.0, 0.999], eps=1e-8),
                g_optimizer=torch.optim.Adam(G.parameters(), lr=lr, betas=[0.0, 0.999], eps=1e-8),
                loss_fn=SID_EDMLoss(), augment_pipe=AugmentPipe(**AUGMENT), dataset_iterator=dataset(),
                num_accumulation_rounds=1, batch_gpu_total=batch, batch_size=batch, loss_scaling=1,
                loss_scaling_G=100, alpha=method_alpha, tmax=800, init_sigma=2.5, ema_halflife_kimg=500,
                ema_rampup_ratio=0.05, cur_nimg=0)


def harness_teacher(net_kwargs: dict, sid_state: dict):
    D = EDMPrecond(build_network("songunet", **net_kwargs), label_dim=0)
    missing = D.load_state_dict(sid_state, strict=False)
    same = not missing.missing_keys and not missing.unexpected_keys
    meta = dict(data_shape=[3, net_kwargs["img_resolution"], net_kwargs["img_resolution"]], label_dim=0)
    return D.eval(), meta, same


def cpu_per_iteration(fn, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sid", required=True, type=Path, help="a checkout of github.com/mingyuanzhou/SiD")
    ap.add_argument("--net", choices=sorted(NETS), default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=4, help="iterations per timed block")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--methods", default="sid,sim", help="the harness's methods to time against SiD's loop")
    a = ap.parse_args()
    if not (a.sid / "training" / "sid_training_loop.py").is_file():
        print(f"error: --sid {a.sid}: no training/sid_training_loop.py there (a checkout of mingyuanzhou/SiD?)",
              file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(1)
    net_kwargs = cifar10_ddpmpp_kwargs(0)
    net_kwargs.update(NETS[a.net])
    lr = 1e-5
    body = sid_loop_body(a.sid)
    ns = sid_namespace(a.sid, net_kwargs, a.batch, lr, method_alpha=1.2)
    D, meta, same_weights = harness_teacher(net_kwargs, ns["true_score"].state_dict())
    methods = a.methods.split(",")
    print(f"config: torch={torch.__version__} threads=1 net={a.net} params={sum(p.numel() for p in D.parameters()):,} "
          f"batch={a.batch} rounds={a.rounds} block={a.block} weights_shared={same_weights} sid={a.sid.resolve()}",
          flush=True)

    def sid_iteration():
        exec(body, ns)

    times, sid_times = {}, {}  # per method of the harness: its blocks, and SiD's blocks paired with them
    with tempfile.TemporaryDirectory() as tmp:
        distillers = {}
        for m in methods:
            d = make_distiller(m, D, meta, a.batch, f"{tmp}/{m}", online=dict(augment_p=0.12),
                               optim=dict(batch_size=a.batch, lr_gen=lr, lr_online=lr),
                               train=dict(iterations=10 ** 9, progress=False, log_every=100))
            state = {"t_last": time.time()}

            def step(d=d, state=state):
                _, state["t_last"] = d.iteration(state["t_last"])
            distillers[m] = step
            times[m], sid_times[m] = [], []
        for fn in (sid_iteration, *distillers.values()):
            cpu_per_iteration(fn, a.warmup)
        for m, step in distillers.items():  # each method of the harness against SiD's loop, in pairs
            pair = [(sid_times[m], sid_iteration), (times[m], step)]
            for r in range(a.rounds):
                for record, fn in (pair if r % 2 == 0 else pair[::-1]):
                    fn()  # untimed: each timed block starts with this side's networks in the caches
                    record.append(cpu_per_iteration(fn, a.block))
    for m in methods:
        # paired: each block against SiD's block of the same round (the machine's speed drifts between rounds)
        ratios = sorted(t / s for t, s in zip(times[m], sid_times[m]))
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        print(f"harness {m}: {1000 * statistics.median(times[m]):.1f} ms CPU per iteration, SiD's loop "
              f"{1000 * statistics.median(sid_times[m]):.1f} ms; ratio {statistics.median(ratios):.3f} "
              f"(median of {a.rounds} rounds, quartiles {q1:.3f}-{q3:.3f})")

if __name__ == "__main__":
    main()
