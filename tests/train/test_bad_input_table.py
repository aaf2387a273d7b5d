"""Bad input at every entry point: `sim` and its subcommands and options, the run config (every section), `--set`,
the config file itself, run-directory contents, the process-group environment and the Python API. Each case must end
with one line (exit code 2 where a command runs) before anything is written. The scale configs and the DAG's
--config are in tests/workflow/test_bad_scale_input.py. The CLI runs in process (`sim_core.cli.main`), as the `sim`
command does; tests/train/test_bad_input.py runs the same paths in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import gmm_config
from sim_core.cli import main
from sim_core.errors import EXIT_BAD_INPUT


def _tree(root: Path) -> dict:
    """Every file below root with its size and modification time: what "nothing written" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _sim(argv, capsys) -> list[str]:
    """Run `sim argv` in process; it must exit with code 2 and one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == EXIT_BAD_INPUT, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ------------------------------------------------------------------------------------------- run config sections
# (a change to the good config, the part of the one-line message that must appear)
CONFIG_CASES = {
    "method: unknown name": (dict(method=dict(name="sim2")), "method: unknown method 'sim2'; valid names: di, sid, sim"),
    "method: not a mapping": (dict(method="sim"), "method: must be a mapping, got str"),
    "method: key of another method": (dict(method=dict(name="di", alpha=1.2)), "method di does not take alpha"),
    "method: sim takes no alpha": (dict(method=dict(name="sim", alpha=1.0)), "method sim does not take alpha"),
    "method: sid alpha not a number": (dict(method=dict(name="sid", alpha="big")), "method.alpha"),
    "method: sid alpha infinite": (dict(method=dict(name="sid", alpha=float("inf"))), "alpha must be finite"),
    "method: di switch not a bool": (dict(method=dict(name="di", train_mode_denoisers="sometimes")),
                                     "method.train_mode_denoisers"),
    "method: unknown distance": (dict(method=dict(name="sim", distance="cosine")), "unknown distance 'cosine'"),
    "method: unknown space": (dict(method=dict(name="sim", space="pixel")), "method.space"),
    "method: detach not a bool": (dict(method=dict(name="sim", detach_direction="maybe")), "method.detach_direction"),
    "method: unknown time dist": (dict(method=dict(name="sim", time_dist="uniform")),
                                  "unknown time distribution 'uniform'"),
    "method: unknown weighting": (dict(method=dict(name="sid", weighting="snr")), "unknown weighting 'snr'"),
    "method: lognormal without params": (dict(method=dict(name="sim", time_dist="lognormal")),
                                         "time distribution lognormal: bad parameters"),
    "method: lognormal negative std": (dict(method=dict(name="sim", time_dist="lognormal",
                                                        time_dist_params=dict(p_mean=0.0, p_std=-1.0))),
                                       "p_std must be > 0"),
    "method: lognormal one bound": (dict(method=dict(name="sim", time_dist="lognormal",
                                                     time_dist_params=dict(p_mean=0.0, p_std=1.0, t_min=0.1))),
                                    "give both t_min and t_max"),
    "method: karr reversed range": (dict(method=dict(name="sim", time_dist="karr",
                                                     time_dist_params=dict(sigma_min=80.0, sigma_max=0.002))),
                                    "need 0 < sigma_min < sigma_max"),
    "method: karr k_max past K": (dict(method=dict(name="sim", time_dist="karr_sid", time_dist_params=dict(k_max=2000))),
                                  "0 <= k_max <= K-1"),
    "method: pseudo_huber c zero": (dict(method=dict(name="sim", distance_params=dict(c=0.0))),
                                    "c must be a positive finite number"),
    "method: huber delta negative": (dict(method=dict(name="sim", distance="huber", distance_params=dict(delta=-1))),
                                     "delta must be a positive finite number"),
    "method: alpha_power alpha 1": (dict(method=dict(name="sim", distance="alpha_power",
                                                     distance_params=dict(alpha=1.0))), "alpha must be > 1"),
    "method: exp_power beta nan": (dict(method=dict(name="sim", distance="exp_power",
                                                    distance_params=dict(beta=float("nan")))),
                                   "beta must be a positive finite number"),
    "method: l2 takes no params": (dict(method=dict(name="sim", distance="l2", distance_params=dict(c=1.0))),
                                   "distance l2: bad parameters"),
    "online: unknown weighting": (dict(online=dict(weighting="snr")), "online.weighting: unknown weighting 'snr'"),
    "online: unknown time dist": (dict(online=dict(time_dist="p_edmm")), "online.time_dist: unknown time distribution"),
    "online: zero steps": (dict(online=dict(steps_per_iter=0)), "online.steps_per_iter"),
    "online: augment_p above 1": (dict(online=dict(augment_p=1.5)), "online.augment_p"),
    "online: augment_p nan": (dict(online=dict(augment_p=float("nan"))), "online.augment_p"),
    "online: typo key": (dict(online=dict(weightng="lambda_edm")), "online.weightng: Extra inputs are not permitted"),
    "optim: negative lr": (dict(optim=dict(lr_gen=-1e-4)), "optim.lr_gen: must be a positive finite number"),
    "optim: zero lr": (dict(optim=dict(lr_online=0)), "optim.lr_online: must be a positive finite number"),
    "optim: infinite lr": (dict(optim=dict(lr_gen=float("inf"))), "optim.lr_gen: must be a positive finite number"),
    "optim: beta of 1": (dict(optim=dict(betas=[0.0, 1.0])), "Adam betas must lie in [0, 1)"),
    "optim: three betas": (dict(optim=dict(betas=[0.0, 0.9, 0.99])), "optim.betas"),
    "optim: zero eps": (dict(optim=dict(eps=0.0)), "optim.eps: must be a positive finite number"),
    "optim: zero batch": (dict(optim=dict(batch_size=0)), "optim.batch_size"),
    "optim: typo key": (dict(optim=dict(batchsize=64)), "optim.batchsize: Extra inputs are not permitted"),
    "ema: zero half-life": (dict(ema=dict(halflife_kimg=0)), "ema.halflife_kimg"),
    "ema: negative ramp-up": (dict(ema=dict(rampup_ratio=-0.1)), "ema.rampup_ratio"),
    "generator: zero t_star": (dict(generator=dict(t_star=0.0)), "generator.t_star"),
    "train: zero iterations": (dict(train=dict(iterations=0)), "train.iterations"),
    "train: no length": (dict(train=dict(iterations=None)), "set iterations or kimg (exactly one)"),
    "train: kimg and iterations disagree": (dict(train=dict(iterations=5, kimg=1.0)), "disagree: set only one"),
    "train: less than an image": (dict(train=dict(iterations=None, kimg=0.0001)), "is less than one image"),
    "train: unknown schedule": (dict(train=dict(eval_schedule="often")), "train.eval_schedule"),
    "train: negative checkpoint cadence": (dict(train=dict(checkpoint_every=-1)), "train.checkpoint_every"),
    "train: zero log cadence": (dict(train=dict(log_every=0)), "train.log_every"),
    "eval: one sample": (dict(eval=dict(num_samples=1)), "eval.num_samples"),
    "eval: zero batch": (dict(eval=dict(batch_size=0)), "eval.batch_size"),
    "eval: zero KID subsets": (dict(eval=dict(kid_subsets=0)), "eval.kid_subsets"),
    "eval: negative seed": (dict(eval=dict(seed=-3)), "eval.seed"),
    "networks: dropout of 1": (dict(networks=dict(dropout=1.0)), "networks.dropout: must lie in [0, 1)"),
    "perf: zero grad_accum": (dict(perf=dict(grad_accum=0)), "perf.grad_accum"),
    "perf: grad_accum not dividing the batch": (dict(perf=dict(grad_accum=3)),
                                                "perf.grad_accum=3 does not divide optim.batch_size=64"),
    "perf: bf16 in float64": (dict(dtype="float64", perf=dict(bf16=True)), "perf.bf16 autocasts float32 networks"),
    "top: unknown section": (dict(optimizer=dict(lr=1e-3)), "optimizer: Extra inputs are not permitted"),
    "top: unknown scale": (dict(scale="huge"), "scale"),
    "top: unknown dtype": (dict(dtype="float16"), "dtype"),
    "top: misspelt device": (dict(device="cudaa"), "device: must be cpu, cuda or cuda:N, got 'cudaa'"),
    "top: device gpu": (dict(device="gpu"), "device: must be cpu, cuda or cuda:N"),
    "top: seed overflows": (dict(seed=2 ** 64), "seed: Input should be less than or equal to 9223372036854775807"),
    "top: negative seed": (dict(seed=-1), "seed: Input should be greater than or equal to 0"),
    "top: seed not a number": (dict(seed="lucky"), "seed"),
    "top: no name": (dict(name=None), "name"),
    "testbed: unknown kind": (dict(testbed=dict(kind="mnist")), "testbed: unknown testbed 'mnist'"),
    "testbed: not a mapping": (dict(testbed=["gmm"]), "testbed: must be a mapping, got list"),
    "testbed: classifier on gmm": (dict(testbed=dict(classifier="c.pt")), "testbed gmm does not take classifier"),
    "testbed: conditional gmm": (dict(testbed=dict(conditional=True)), "testbed.conditional: the gmm testbed is "
                                                                        "unconditional"),
    "testbed: labels on digits": (dict(testbed=dict(kind="digits", labels="uniform")),
                                  "testbed digits does not take labels"),
    "testbed: unknown cifar10 label rule": (dict(testbed=dict(kind="cifar10", labels="balanced")), "testbed.labels"),
}
RUNTIME_CASES = {  # valid configs that fail when the run is loaded, still before the run directory exists
    "missing teacher": (dict(testbed=dict(teacher="{tmp}/nope.pt")), "teacher file not found"),
    "teacher checksum": (dict(testbed=dict(teacher_sha256="0" * 64)), "does not match the expected"),
    "teacher of another testbed": (dict(testbed=dict(kind="digits")), "is for testbed 'gmm', not 'digits'"),
    "garbage teacher": (dict(testbed=dict(teacher="{garbage}")), "is corrupt or not a torch file"),
    "augmentation on 2-D data": (dict(online=dict(augment_p=0.12)), "online.augment_p=0.12: EDM's AugmentPipe needs "
                                                                    "images"),
    "dropout on a network without": (dict(networks=dict(dropout=0.1)), "networks.dropout=0.1: the teacher's network"),
    "batch not divisible over processes": (dict(optim=dict(batch_size=63)), None),  # only with WORLD_SIZE=2 (below)
}


def _merge(base: dict, over: dict, tmp_path) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return json.loads(json.dumps(out).replace("{tmp}", str(tmp_path)).replace("{garbage}", str(tmp_path / "g.pt")))


@pytest.mark.parametrize("case", sorted(CONFIG_CASES) + sorted(k for k in RUNTIME_CASES if RUNTIME_CASES[k][1]))
def test_a_bad_run_config_is_one_line_and_writes_nothing(tmp_path, gmm_teacher, capsys, case):
    over, expected = CONFIG_CASES.get(case) or RUNTIME_CASES[case]
    (tmp_path / "g.pt").write_bytes(os.urandom(512))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(_merge(gmm_config(gmm_teacher), over, tmp_path)))
    before = _tree(tmp_path)
    line = _sim(["distill", "--config", cfg, "--run-dir", tmp_path / "run"], capsys)
    assert expected in line, line
    assert _tree(tmp_path) == before  # no run directory, nothing else


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, gmm_teacher, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(gmm_config(gmm_teacher, device="cuda")))
    assert "this machine has no CUDA GPU; use device cpu" in _sim(["distill", "--config", cfg, "--run-dir",
                                                                   tmp_path / "run"], capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- the config file
FILE_CASES = {
    "missing file": (None, "config file not found"),
    "binary garbage": (bytes(range(256)) * 4, "is not a text file"),
    "a YAML list": (b"- name: x\n- seed: 1\n", "must hold a mapping of sections, not a list"),
    "a YAML scalar": (b"just a sentence\n", "must hold a mapping of sections, not a str"),
    "invalid YAML": (b"name: [unclosed\n", "is not valid YAML"),
    "empty file": (b"", "name: Field required"),
    "tabs in YAML": (b"name: x\ntrain:\n\titerations: 3\n", "is not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_a_bad_config_file_is_one_line(tmp_path, capsys, case):
    content, expected = FILE_CASES[case]
    cfg = tmp_path / "cfg.yaml"
    if content is not None:
        cfg.write_bytes(content)
    before = _tree(tmp_path)
    assert expected in _sim(["distill", "--config", cfg, "--run-dir", tmp_path / "run"], capsys)
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------------------------- --set
SET_CASES = {
    "no equals sign": (["optim.lr_gen"], "bad override 'optim.lr_gen': expected KEY=VALUE"),
    "unknown key": (["optim.lrgen=1e-3"], "optim.lrgen: Extra inputs are not permitted"),
    "into a value": (["seed.x=1"], "bad override 'seed.x': seed is not a section"),
    "value not YAML": (["optim.lr_gen=[1, 2"], "the value is not YAML"),
    "wrong type": (["optim.batch_size=many"], "optim.batch_size"),
    "unknown method by override": (["method.name=simm"], "unknown method 'simm'"),
    "a checksum of digits that does not match": (["testbed.teacher_sha256=" + "1" * 64], "does not match the expected"),
}


@pytest.mark.parametrize("case", sorted(SET_CASES))
def test_a_bad_override_is_one_line(tmp_path, gmm_teacher, capsys, case):
    sets, expected = SET_CASES[case]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(gmm_config(gmm_teacher)))
    before = _tree(tmp_path)
    args = ["distill", "--config", cfg, "--run-dir", tmp_path / "run"] + [x for s in sets for x in ("--set", s)]
    line = _sim(args, capsys)
    assert expected in line, line
    assert _tree(tmp_path) == before


def test_an_all_digit_checksum_override_stays_text(tmp_path, gmm_teacher):
    """A SHA-256 made of digits only is a string to the field that takes it, not a YAML integer."""
    from sim_core.files import sha256_file
    from sim_core.train.config import load_config
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(gmm_config(gmm_teacher)))
    digits = "0123456789" * 6 + "0123"
    assert load_config(cfg, [f"testbed.teacher_sha256={digits}"]).testbed.teacher_sha256 == digits
    real = sha256_file(gmm_teacher)
    assert load_config(cfg, [f"testbed.teacher_sha256={real}"]).testbed.teacher_sha256 == real
    assert load_config(cfg, ["optim.lr_gen=3e-4"]).optim.lr_gen == 3e-4  # numbers are still numbers


# ------------------------------------------------------------------------------------------- run directories
def _finished_run(tmp_path, teacher) -> tuple[Path, Path]:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(gmm_config(teacher, train=dict(iterations=2, eval_every=0))))
    run = tmp_path / "run"
    main(["distill", "--config", str(cfg), "--run-dir", str(run)])  # returns: a finished run exits 0
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    return cfg, run


def test_run_directory_that_is_a_file(tmp_path, gmm_teacher, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(gmm_config(gmm_teacher)))
    (tmp_path / "run").write_text("not a directory")
    before = _tree(tmp_path)
    assert "is a file, not a directory" in _sim(["distill", "--config", cfg, "--run-dir", tmp_path / "run"], capsys)
    assert _tree(tmp_path) == before


def test_run_directory_on_a_read_only_filesystem(tmp_path, gmm_teacher, capsys):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps(gmm_config(gmm_teacher)))
        line = _sim(["distill", "--config", cfg, "--run-dir", mnt / "run"], capsys)
        assert f"run directory {mnt / 'run'} cannot be written: Read-only file system" in line
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


RUN_DIR_DAMAGE = {
    "garbage config.yaml": ("config.yaml", b"\x00\x01\x02 not yaml: [", "holds an unreadable config.yaml"),
    "config.yaml of another schema": ("config.yaml", b"name: x\nlearning_rate: 3\n", "holds an unreadable config.yaml"),
    "garbage status.json": ("status.json", b"{not json", "is not JSON: the run directory is damaged"),
    "status.json without a status": ("status.json", b'{"step": 3}', "holds no run status"),
    "status.json a list": ("status.json", b"[1, 2]", "holds no run status"),
    "damaged metrics line": ("metrics.jsonl", b'{"step": 0}\ngarbage\n{"step": 1}\n', "line 2 is not a JSON record"),
}


@pytest.mark.parametrize("case", sorted(RUN_DIR_DAMAGE))
def test_damaged_run_directory_contents_are_one_line(tmp_path, gmm_teacher, capsys, case):
    name, content, expected = RUN_DIR_DAMAGE[case]
    cfg, run = _finished_run(tmp_path, gmm_teacher)
    capsys.readouterr()
    (run / "status.json").unlink()  # as if interrupted: the next start reads what the directory holds
    (run / name).write_bytes(content)
    before = _tree(tmp_path)
    assert expected in _sim(["distill", "--config", cfg, "--run-dir", run], capsys)
    assert _tree(tmp_path) == before


def test_a_run_directory_of_another_config(tmp_path, gmm_teacher, capsys):
    cfg, run = _finished_run(tmp_path, gmm_teacher)
    capsys.readouterr()
    before = _tree(tmp_path)
    assert "holds config" in _sim(["distill", "--config", cfg, "--run-dir", run, "--set", "seed=7"], capsys)
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------------------------- the other commands
def test_other_commands(tmp_path, gmm_teacher, capsys):
    """Every subcommand's bad options and files, one line each, no output file."""
    (tmp_path / "garbage.pt").write_bytes(os.urandom(300))
    (tmp_path / "adir").mkdir()
    (tmp_path / "notrun").mkdir()
    cases = [
        (["--threads", "0", "summarize", "x"], "argument --threads: must be >= 1, got 0"),
        (["--threads", "two", "summarize", "x"], "argument --threads: 'two' is not a whole number"),
        ([], "the following arguments are required: cmd"),
        (["train"], "invalid choice: 'train'"),
        (["teacher", "--testbed", "cifar10", "--out", tmp_path / "t.pt"], "argument --testbed: invalid choice"),
        (["teacher", "--testbed", "gmm", "--out", tmp_path / "t.pt", "--iterations", "0"],
         "argument --iterations: must be >= 1, got 0"),
        (["teacher", "--testbed", "gmm", "--out", tmp_path / "t.pt", "--batch-size", "-4"],
         "argument --batch-size: must be >= 1, got -4"),
        (["teacher", "--testbed", "gmm", "--out", tmp_path / "t.pt", "--seed", "-1"], "argument --seed"),
        (["teacher", "--testbed", "gmm", "--out", tmp_path / "adir"], "is a directory; name a file"),
        (["teacher", "--testbed", "gmm", "--conditional", "--out", tmp_path / "t.pt"],
         "the gmm testbed is unconditional"),
        (["teacher", "--testbed", "gmm", "--out", tmp_path / "t.pt", "--mixture", "square"], "unknown toy mixture"),
        (["classifier", "--out", tmp_path / "adir"], "is a directory; name a file"),
        (["classifier", "--out", tmp_path / "c.pt", "--seed", str(2 ** 64)], "a seed must be below 2^63"),
        (["sample-teacher", "--teacher", gmm_teacher, "--out", tmp_path / "s.pt", "--n", "0"],
         "argument --n: must be >= 1, got 0"),
        (["sample-teacher", "--teacher", gmm_teacher, "--out", tmp_path / "s.pt", "--steps", "0"],
         "argument --steps: must be >= 1, got 0"),
        (["sample-teacher", "--teacher", tmp_path / "missing.pt", "--out", tmp_path / "s.pt"],
         "teacher file not found"),
        (["sample-teacher", "--teacher", tmp_path / "garbage.pt", "--out", tmp_path / "s.pt"], "is corrupt"),
        (["sample-teacher", "--teacher", gmm_teacher, "--out", tmp_path / "adir"], "is a directory; name a file"),
        (["summarize", tmp_path / "missing"], "is not a run directory: it has no config.yaml"),
        (["summarize", tmp_path / "notrun"], "is not a run directory: it has no config.yaml"),
        (["distill", "--run-dir", tmp_path / "run"], "the following arguments are required: --config"),
    ]
    for argv, expected in cases:
        before = _tree(tmp_path)
        line = _sim(argv, capsys)
        assert expected in line, (argv, line)
        assert _tree(tmp_path) == before, argv


# ------------------------------------------------------------------------------------------- the environment
@pytest.mark.parametrize("env,expected", [
    (dict(WORLD_SIZE="2"), "WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT, RANK not set"),
    (dict(WORLD_SIZE="two"), "must hold whole numbers: WORLD_SIZE='two'"),
    (dict(WORLD_SIZE="2", RANK="5", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999"), "RANK=5 is not below WORLD_SIZE=2"),
])
def test_a_bad_process_group_environment_is_one_line(tmp_path, gmm_teacher, capsys, monkeypatch, env, expected):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(gmm_config(gmm_teacher)))
    assert expected in _sim(["distill", "--config", cfg, "--run-dir", tmp_path / "run"], capsys)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- the Python API
def test_the_python_api_raises_one_line_errors(tmp_path, gmm_teacher):
    from sim_core.errors import CheckpointError, ConfigError, RunDirError
    from sim_core.testbeds import TESTBEDS, load_testbed
    from sim_core.train.config import parse_config
    from sim_core.train.distributed import DistEnv
    from sim_core.train.loop import distill
    from sim_core.train.run_dir import read_metrics, read_status
    good = parse_config(gmm_config(gmm_teacher))
    cases = [
        (lambda: parse_config(["not", "a", "dict"]), ConfigError, "a run config is a mapping of sections"),
        (lambda: parse_config({}), ConfigError, "Field required"),
        (lambda: TESTBEDS.get("mnist"), ValueError, "unknown testbed 'mnist'; valid names: cifar10, digits, gmm"),
        (lambda: load_testbed(good.testbed.model_copy(update={"teacher": str(tmp_path / "x.pt")})), CheckpointError,
         "teacher file not found"),
        (lambda: distill(good, tmp_path / "r", dist=DistEnv(rank=0, world_size=3)), ValueError, "not divisible"),
        (lambda: TESTBEDS.get("gmm").build_asset("classifier", {}, tmp_path / "c.pt"), ValueError,
         "testbed gmm builds no 'classifier' asset; it builds teacher"),
        (lambda: TESTBEDS.get("gmm").dataset(True), ValueError, "testbed gmm has no class-conditional variant"),
    ]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "metrics.jsonl").write_text('{"no_step": 1}\n')
    (bad_dir / "status.json").write_text('"running"')
    cases += [(lambda: read_metrics(bad_dir), CheckpointError, "line 1 is not a metrics record (no step)"),
              (lambda: read_status(bad_dir), CheckpointError, "holds no run status")]
    for fn, kind, expected in cases:
        with pytest.raises(kind) as e:
            fn()
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "r").exists() and RunDirError
