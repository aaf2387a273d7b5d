"""Command line: ``sim teacher | classifier | distill | sample-teacher | summarize``.

Bad input (config, names, numbers, files) ends with one line on stderr and exit code 2, before any work.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

EXIT_BAD_INPUT = 2


def _cmd_teacher(a):
    from .toy_assets import build_toy_teacher
    overrides = {k: v for k, v in dict(iterations=a.iterations, batch_size=a.batch_size).items() if v is not None}
    info = build_toy_teacher(a.testbed, a.out, conditional=a.conditional, mixture=a.mixture, seed=a.seed,
                             progress=not a.no_progress, **overrides)
    print(json.dumps(info))


def _cmd_classifier(a):
    from .toy.classifier import save_classifier, train_classifier
    model, acc = train_classifier(seed=a.seed)
    save_classifier(model, a.out, test_accuracy=acc)
    print(json.dumps({"test_accuracy": acc, "out": a.out}))


def _cmd_distill(a):
    from .config import load_config
    from .distances import build_distance
    from .train import EXIT_INTERRUPTED, distill
    cfg = load_config(a.config, a.set)
    if cfg.method.name == "sim":  # warn (once, visibly) when the distance breaks Theorem 3.1's conditions
        build_distance(cfg.method.distance or "pseudo_huber", warn=True, **cfg.method.distance_params)
    run_dir = a.run_dir or f"runs/{cfg.name}"
    status = distill(cfg, run_dir)
    print(json.dumps(status))
    if status["status"] == "interrupted":
        sys.exit(EXIT_INTERRUPTED)


def _cmd_sample_teacher(a):
    import torch
    from .sampler import heun_sampler, nfe
    from .teacher import load_teacher
    D, meta = load_teacher(a.teacher)
    rng = torch.Generator().manual_seed(a.seed)
    latents = torch.randn((a.n, *meta["data_shape"]), generator=rng)
    labels = None
    if meta["label_dim"]:
        labels = torch.nn.functional.one_hot(torch.randint(0, meta["label_dim"], (a.n,), generator=rng),
                                             meta["label_dim"]).float()
    x = heun_sampler(D, latents, labels, num_steps=a.steps)
    torch.save({"samples": x, "labels": labels, "nfe": nfe(a.steps)}, a.out)
    print(json.dumps({"out": a.out, "nfe": nfe(a.steps), "n": a.n}))


def _cmd_summarize(a):
    from .summary import summarize, to_markdown
    rows = summarize(a.run_dirs)
    for testbed in dict.fromkeys(r["testbed"] for r in rows):  # one table per testbed: different metrics
        print(to_markdown([r for r in rows if r["testbed"] == testbed]) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sim", description="SIM / SiD / Diff-Instruct one-step distillation harness")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher", help="train a toy teacher with the EDM loss")
    t.add_argument("--testbed", required=True, choices=["gmm", "digits"])
    t.add_argument("--out", required=True)
    t.add_argument("--conditional", action="store_true")
    t.add_argument("--mixture", default="ring")
    t.add_argument("--iterations", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=_cmd_teacher)
    c = sub.add_parser("classifier", help="train the digits feature network for FID/KID/IS")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(fn=_cmd_classifier)
    d = sub.add_parser("distill", help="run one distillation from a config file")
    d.add_argument("--config", required=True)
    d.add_argument("--run-dir", help="default: runs/<name>")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    d.set_defaults(fn=_cmd_distill)
    s = sub.add_parser("sample-teacher", help="sample a teacher with EDM's Heun sampler")
    s.add_argument("--teacher", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--steps", type=int, default=18, help="Heun steps; NFE = 2*steps - 1")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_sample_teacher)
    m = sub.add_parser("summarize", help="print a table of run directories' first and last evaluations")
    m.add_argument("run_dirs", nargs="+")
    m.set_defaults(fn=_cmd_summarize)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)  # 1 thread is fastest for small networks on 2 cores (ENVIRONMENT.md)
    warnings.simplefilter("default", RuntimeWarning)
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .registry import UnknownNameError
    from .train import RunDirError
    try:
        args.fn(args)
    except (ConfigError, CheckpointError, RunDirError, UnknownNameError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
