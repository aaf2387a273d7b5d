"""python -m workflow.study build|serve|results: bad input is one line 'error: ...' and exit code 2."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim_core.errors import EXIT_BAD_INPUT, CheckpointError, ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage block would be several lines
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m workflow.study", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    b = sub.add_parser("build", help="write a study folder from two sample files")
    b.add_argument("--a", required=True, help="sample file of method A (.pt: images, prompts)")
    b.add_argument("--b", required=True, help="sample file of method B, same prompts in the same order")
    b.add_argument("--label-a", required=True)
    b.add_argument("--label-b", required=True)
    b.add_argument("--out", required=True, help="the study folder to create (must not exist or be empty)")
    b.add_argument("--prompts", type=int, default=17)
    b.add_argument("--raters", type=int, default=30)
    b.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("serve", help="serve the study (uvicorn)")
    s.add_argument("dir")
    s.add_argument("--host", default="127.0.0.1", help="127.0.0.1 unless told otherwise")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--db", default=None, help="an SQLAlchemy URL (default: sqlite DIR/answers.db)")
    r = sub.add_parser("results", help="the result as JSON")
    r.add_argument("dir", help="a study folder or an SQLAlchemy URL")
    r.add_argument("--csv", default=None, help="also write the raw answers to this CSV file")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "build":
            from workflow.study.build import build_study
            study = build_study(args.a, args.b, args.out, args.label_a, args.label_b, n_prompts=args.prompts,
                                raters=args.raters, seed=args.seed)
            print(f"study {study['study_id']}: {len(study['pairs'])} pairs, {len(study['raters'])} raters in "
                  f"{args.out} (invitations.csv, admin_token.txt)")
        elif args.cmd == "serve":
            if not 0 < args.port < 65536:
                raise ConfigError(f"--port {args.port} is not a port number")
            import uvicorn

            from workflow.study.server import create_app
            app = create_app(args.dir, args.db)
            print(f"invitations: http://{args.host}:{args.port}/r/<token> (tokens in "
                  f"{Path(args.dir) / 'invitations.csv'}); results: /admin/<admin_token.txt>", flush=True)
            # no access log: every rater URL holds its token
            uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
        else:
            from workflow.study.results import answers_csv, study_result
            result = study_result(args.dir)
            if args.csv:
                from sim_core.files import atomic_write_text, check_output
                out = check_output(args.csv, "--csv")
                atomic_write_text(out, answers_csv(args.dir))
            print(json.dumps(result, indent=2))
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
