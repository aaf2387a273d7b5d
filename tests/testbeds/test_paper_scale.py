"""Paper scale (CIFAR-10) wired end to end on files in the real formats that the test writes: a small SongUNet
teacher as an NVIDIA EDM pickle, randomly initialised Inception-v3 weights in torch-fidelity's format, FID
reference statistics in EDM's npz format. The numbers mean nothing (random networks); the mechanism is real:
the restricted loader, the Inception features, the FID protocols, the DAG's asset checks and its resources."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sim_core.core.edm import EDMPrecond
from sim_core.nets.songunet import SongUNet
from sim_core.train.config import parse_config

import nvidia_format as nv

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(img_resolution=8, in_channels=3, out_channels=3, augment_dim=9, model_channels=16,
             channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """An asset directory with the manifest's file names (sim_core/assets.py), holding small stand-ins."""
    d = tmp_path_factory.mktemp("paper-assets")
    torch.manual_seed(0)
    D = EDMPrecond(nv.randomize_(SongUNet(**SMALL, label_dim=0), 1), label_dim=0).eval()
    return d, nv.write_stand_in_paper_assets(d, D)


def cifar_config(assets, **train) -> dict:
    d, inception_sha = assets
    return dict(name="cifar-tiny", scale="paper", testbed=dict(
        kind="cifar10", teacher=str(d / "edm-cifar10-32x32-uncond-vp.pkl"),
        inception=str(d / "weights-inception-2015-12-05-6726825d.pth"), inception_sha256=inception_sha,
        fid_ref=str(d / "cifar10-32x32.npz")),
        method=dict(name="sim"), optim=dict(batch_size=4, lr_gen=1e-4, lr_online=1e-4),
        train=dict(iterations=2, log_every=1, eval_every=2, progress=False, **train),
        eval=dict(num_samples=6, batch_size=6))


def test_cifar10_run_trains_and_evaluates_by_protocol(tmp_path, assets):
    """A distillation run on the CIFAR-10 testbed: in-training FID/IS at steps 0 and 2 (SiD's one-trial metric),
    then the final evaluation by EDM's protocol: three disjoint seed ranges, the minimum reported."""
    from sim_core.testbeds import load_testbed
    from sim_core.train.evaluate import evaluate_snapshot, latest_snapshot
    from sim_core.train.loop import distill
    from sim_core.train.run_dir import read_metrics
    torch.set_num_threads(1)
    cfg = parse_config(cifar_config(assets))
    status = distill(cfg, tmp_path / "run")
    assert status["status"] == "finished" and status["step"] == 2
    evals = [r for r in read_metrics(tmp_path / "run") if "eval/fid" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(math.isfinite(r["eval/fid"]) and r["eval/fid"] > 0 and r["eval/isc"] >= 1 for r in evals)
    tb = load_testbed(cfg.testbed)
    small = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"num_samples": 4})})
    final = evaluate_snapshot(small, latest_snapshot(tmp_path / "run"), protocol="edm", testbed=tb)
    assert final["fid_trials"] == 3 and math.isfinite(final["fid"]) and final["fid_spread"] >= 0
    again = evaluate_snapshot(small, latest_snapshot(tmp_path / "run"), protocol="edm", testbed=tb)
    assert again == final  # one seed per image: deterministic
    teacher = tb.teacher_metrics(nfe=3, seed=0, eval_cfg=small.eval, protocol="edm")
    assert teacher["fid_trials"] == 3 and math.isfinite(teacher["fid"])
    assert teacher["fid"] != final["fid"]


def test_cifar10_testbed_refuses_the_wrong_files_before_training(tmp_path, assets):
    from sim_core.errors import CheckpointError
    from sim_core.testbeds import load_testbed
    d, _ = assets
    cfg = parse_config(cifar_config(assets))
    with pytest.raises(CheckpointError, match="unconditional"):  # a conditional run on the uncond teacher
        load_testbed(cfg.testbed.model_copy(update={"conditional": True, "labels": "uniform"}))
    with pytest.raises(CheckpointError, match="SHA-256"):  # not the published Inception file
        load_testbed(cfg.testbed.model_copy(update={"inception_sha256": None}))
    with pytest.raises(CheckpointError, match="not found"):
        load_testbed(cfg.testbed.model_copy(update={"fid_ref": str(tmp_path / "missing.npz")}))


def _snakemake(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_paper_dag_dry_run_asks_for_table5_resources(tmp_path):
    """`snakemake --profile slurm all_tables --config scale=paper` builds the whole paper DAG (dry run): every
    distillation job asks for Table 5's 4 GPUs (4 data-parallel tasks), the teacher rows for one."""
    p = _snakemake("--profile", "slurm", "all_tables", "-n", "--config", "scale=paper",
                   f"results_dir={tmp_path / 'results'}")
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout + p.stderr
    blocks = out.split("rule ")
    distill = [b for b in blocks if b.startswith("distill_")]
    rows = [b for b in blocks if b.startswith("teacher_rows")]
    assert len(distill) == 26  # 4 + 4 table rows, 9 figure-2 lines x 2 learning rates
    assert all("job_tasks=4" in b and "job_gpus=4" in b and "job_timeout_min=2880" in b for b in distill)
    assert len(rows) == 2 and all("job_gpus=1" in b for b in rows)
    assert "verify_assets" in out and "aggregate_table" in out


def test_missing_paper_assets_stop_the_dag_before_any_job(tmp_path):
    """No assets: the DAG stops at verify_assets with one line naming every missing file, its URL and what to
    do; no job is submitted."""
    results = tmp_path / "results"
    p = _snakemake("all_tables", "--cores", "1", "--config", "scale=paper_short", f"results_dir={results}",
                   f"asset_files={{dir: {tmp_path / 'nothing-here'}}}")
    assert p.returncode != 0
    msg = [line for line in p.stderr.splitlines() if "assets missing" in line]
    assert msg, p.stderr[-2000:]
    for name in ("teacher_uncond", "fid_ref", "inception"):
        assert name in msg[0]
    assert "download_assets" in msg[0]
    assert not (results / "submitit").exists() and not (results / "runs").exists()


def test_tiny_paper_dag_end_to_end(tmp_path, assets):
    """The paper-scale DAG on the stand-in files (CPU, tiny budget): verify_assets pins their checksums, one
    distillation run and the teacher rows are evaluated by EDM's protocol, and Table 1 names the protocol in
    its cells."""
    d, inception_sha = assets
    scale = yaml.safe_load((ROOT / "configs/scales/paper_short.yaml").read_text())
    scale.update(results_dir=str(tmp_path / "results"), resources={},
                 asset_files=dict(dir=str(d), sha256={"inception": inception_sha}))
    scale["base"].update(device="cpu", threads=1, perf={"grad_accum": 1},
                         optim=dict(batch_size=4), eval=dict(num_samples=4, batch_size=4),
                         train=dict(iterations=2, log_every=1, eval_every=2, checkpoint_every=0, progress=False))
    scale["experiments"] = {"table1": dict(testbed="cifar10", lrs=[1e-4], seeds=[0], teacher_nfe=[1],
                                           rows=[{"label": "SIM", "method": {"name": "sim"}}])}
    path = tmp_path / "tiny-paper.yaml"
    path.write_text(yaml.safe_dump(scale))
    p = _snakemake("table1", "--cores", "2", "--quiet", "progress", "--config", f"scale_config={path}",
                   timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    results = tmp_path / "results"
    verified = json.loads((results / "assets" / "verified.json").read_text())
    assert verified["inception"]["sha256_source"] == "config"
    assert (d / "SHA256SUMS").read_text().count("edm-cifar10-32x32-uncond-vp.pkl") == 1  # pinned on first use
    table = (results / "tables" / "table1.csv").read_text()
    assert "EDM protocol: min of 3 seed ranges" in table
    assert "Teacher (Heun, NFE 1)" in table


def test_verify_assets_refuses_wrong_teacher_and_truncated_pickle(tmp_path):
    """The asset check opens the pickles (restricted unpickler): a class-conditional checkpoint in the
    unconditional teacher's place, and a truncated pickle, each fail in one line; nothing is pinned for them."""
    from sim_core.assets import MANIFEST, verify_assets
    from sim_core.errors import CheckpointError
    path = tmp_path / MANIFEST.get("teacher_uncond").filename
    nv.write_edm_pickle(path, EDMPrecond(SongUNet(**SMALL, label_dim=10), label_dim=10).eval())
    with pytest.raises(CheckpointError, match="conditional") as e:
        verify_assets(["teacher_uncond"], tmp_path)
    assert "\n" not in str(e.value) and path.name in str(e.value)
    nv.write_edm_pickle(path, EDMPrecond(SongUNet(**SMALL, label_dim=0), label_dim=0).eval())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as e:
        verify_assets(["teacher_uncond"], tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "SHA256SUMS").exists() or path.name not in (tmp_path / "SHA256SUMS").read_text()


def test_paper_t2i_dag_dry_run_asks_for_b3s_resources_and_settings(tmp_path):
    """`snakemake --profile slurm all_tables --config scale=paper_t2i -n`: Table 3 and Figure 3 at paper scale, one
    job per method on 4 GPUs, the teacher rows on one; every run config is Appendix B.3's (batch 1024 by 8
    micro-batches per GPU, bf16, checkpointing, lr 5e-6, the t2i distribution and weight 1 for both steps)."""
    p = _snakemake("--profile", "slurm", "all_tables", "-n", "--config", "scale=paper_t2i",
                   f"results_dir={tmp_path / 'results'}")
    assert p.returncode == 0, p.stderr[-2000:]
    blocks = (p.stdout + p.stderr).split("rule ")
    distill = [b for b in blocks if b.startswith("distill_table3")]
    assert len(distill) == 4 and all("job_tasks=4" in b and "job_gpus=4" in b for b in distill)
    assert any(b.startswith("teacher_rows") and "job_gpus=1" in b for b in blocks)
    assert any(b.startswith("aggregate_figure3") for b in blocks) and any(b.startswith("verify_assets") for b in blocks)
    from workflow.dag import load
    S, SW, _ = load({"scale": "paper_t2i", "results_dir": str(tmp_path / "results")})
    assert len(SW.runs) == 4 and SW.downloads.keys() >= {"pixart_512", "sam_llava", "coco_captions", "imagereward"}
    for run in SW.runs.values():
        cfg = parse_config(run.config)
        assert (cfg.optim.batch_size, cfg.perf.grad_accum, cfg.perf.bf16, cfg.perf.checkpointing) == (1024, 8, True,
                                                                                                      True)
        assert cfg.optim.lr_gen == cfg.optim.lr_online == 5e-6 and cfg.train.iterations == 16000
        assert (cfg.method.time_dist, cfg.method.weighting, cfg.online.time_dist, cfg.online.weighting) == \
            ("t2i", "nowgt", "t2i", "nowgt")
        tb = cfg.testbed
        assert tb.kind == "t2i" and tb.teacher == tb.text_encoder == SW.downloads["pixart_512"]
        assert tb.vae == f"{SW.downloads['pixart_512']}/vae"
        assert tb.imagereward == f"{SW.downloads['imagereward']}/ImageReward.pt"
        assert (tb.text_encoder_device, tb.text_encoder_dtype, tb.teacher_guidance) == ("cuda", "bfloat16", 4.5)
        assert tb.scorer_device == "cuda"
    rows = SW.teacher_rows["table3"]
    assert sorted(r["nfe"] for r in rows) == [14, 20, 30]
    assert all(r["testbed_config"]["text_encoder_device"] == "cuda" for r in rows)  # the runs' testbed settings
    assert S.base["eval"]["num_samples"] == 5000  # COCO-5k
