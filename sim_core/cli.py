"""Command line: ``sim teacher | classifier | distill | sample-teacher | summarize``.

Bad input (config, names, numbers, files) ends with one line on stderr and exit code 2, before any work.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
import warnings

from sim_core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_IO


def _cmd_teacher(a):
    from sim_core.files import check_output
    from sim_core.testbeds import TESTBEDS
    check_output(a.out, "teacher file")
    overrides = {k: v for k, v in dict(iterations=a.iterations, batch_size=a.batch_size).items() if v is not None}
    if a.testbed == "gmm":
        overrides["mixture"] = a.mixture
    info = TESTBEDS.get(a.testbed).build_asset("teacher", dict(conditional=a.conditional, seed=a.seed,
                                                               progress=not a.no_progress, **overrides), a.out)
    print(json.dumps(info))


def _cmd_classifier(a):
    from sim_core.files import check_output
    from sim_core.testbeds import TESTBEDS
    check_output(a.out, "classifier file")
    info = TESTBEDS.get("digits").build_asset("classifier", dict(seed=a.seed), a.out)
    print(json.dumps({**info, "out": a.out}))


def _cmd_distill(a):
    from sim_core.train.config import load_config
    from sim_core.train.loop import distill
    cfg = load_config(a.config, a.set)
    cfg.method.build(warn=True)  # say (once, visibly) when a choice breaks Theorem 3.1's conditions
    run_dir = a.run_dir or f"runs/{cfg.name}"
    status = distill(cfg, run_dir)
    print(json.dumps(status))
    if status["status"] == "interrupted":
        print(f"interrupted by {status.get('signal')} at step {status['step']}: run the same command to resume",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _cmd_sample_teacher(a):
    import torch

    from sim_core.core.sampler import heun_sampler, nfe
    from sim_core.files import atomic_torch_save, check_output
    from sim_core.testbeds.base import uniform_labels
    from sim_core.testbeds.edm_teacher import load_teacher
    check_output(a.out, "samples file")
    D, meta = load_teacher(a.teacher)
    rng = torch.Generator().manual_seed(a.seed)
    latents = torch.randn((a.n, *meta["data_shape"]), generator=rng)
    labels = uniform_labels(a.n, meta["label_dim"], rng)
    x = heun_sampler(D, latents, labels, num_steps=a.steps)
    atomic_torch_save({"samples": x, "labels": labels, "nfe": nfe(a.steps)}, a.out)
    print(json.dumps({"out": a.out, "nfe": nfe(a.steps), "n": a.n}))


def _cmd_summarize(a):
    from sim_core.train.summary import summarize, to_markdown
    rows = summarize(a.run_dirs)
    for testbed in dict.fromkeys(r["testbed"] for r in rows):  # one table per testbed: different metrics
        print(to_markdown([r for r in rows if r["testbed"] == testbed]) + "\n")


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line on stderr, exit code 2 (argparse's own print a usage block first)."""

    def error(self, message):
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _seed(text: str) -> int:
    value = _count(0)(text)
    if value > 2 ** 63 - 1:
        raise argparse.ArgumentTypeError(f"a seed must be below 2^63, got {value}")
    return value


def _built_teachers() -> list[str]:
    from sim_core.testbeds import TESTBEDS
    return [n for n in TESTBEDS.names() if "teacher" in TESTBEDS.get(n).builders]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sim", description="SIM / SiD / Diff-Instruct one-step distillation harness")
    p.add_argument("--threads", type=_count(1), default=1, help="torch threads (default 1)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    t = sub.add_parser("teacher", help="train a toy teacher with the EDM loss")
    t.add_argument("--testbed", required=True, choices=_built_teachers(), help="a testbed whose teacher is built here")
    t.add_argument("--out", required=True)
    t.add_argument("--conditional", action="store_true")
    t.add_argument("--mixture", default="ring")
    t.add_argument("--iterations", type=_count(1))
    t.add_argument("--batch-size", type=_count(1))
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=_cmd_teacher)
    c = sub.add_parser("classifier", help="train the digits feature network for FID/KID/IS")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=_seed, default=0)
    c.set_defaults(fn=_cmd_classifier)
    d = sub.add_parser("distill", help="run one distillation from a config file")
    d.add_argument("--config", required=True)
    d.add_argument("--run-dir", help="default: runs/<name>")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    d.set_defaults(fn=_cmd_distill)
    s = sub.add_parser("sample-teacher", help="sample a teacher with EDM's Heun sampler")
    s.add_argument("--teacher", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=_count(1), default=1000)
    s.add_argument("--steps", type=_count(1), default=18, help="Heun steps; NFE = 2*steps - 1")
    s.add_argument("--seed", type=_seed, default=0)
    s.set_defaults(fn=_cmd_sample_teacher)
    m = sub.add_parser("summarize", help="print a table of run directories' first and last evaluations")
    m.add_argument("run_dirs", nargs="+")
    m.set_defaults(fn=_cmd_summarize)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch
    # 1 thread is fastest for small networks on 2 cores (docs/environment.md#threads-on-small-cpus)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("default", RuntimeWarning)
    from sim_core.errors import CheckpointError, ConfigError, RunDirError
    from sim_core.registry import UnknownNameError
    try:
        args.fn(args)
    except (ConfigError, CheckpointError, RunDirError, UnknownNameError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {e.strerror} writing {e.filename or 'a file'}: free some space and run the same command "
              "again; it resumes from the last checkpoint", file=sys.stderr)
        sys.exit(EXIT_IO)
    except KeyboardInterrupt:  # Ctrl-C twice: no checkpoint of this step; the last one stays
        print("stopped without a checkpoint of the last steps (Ctrl-C twice); run the same command to resume from the "
              "last checkpoint", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
