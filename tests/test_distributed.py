"""Data-parallel distillation (sim_core/distributed.py): a 2-process gloo run launched as a 2-task submitit job
gives the losses and weights of a 1-process run with the same global batch, up to float summation order."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import gmm_config
from sim_core.config import parse_config
from sim_core.distributed import DistEnv
from sim_core.train import distill, read_metrics


def _cfg(teacher, method):
    return gmm_config(teacher, method={"name": method}, optim=dict(batch_size=16, lr_gen=1e-3, lr_online=1e-3),
                      train=dict(iterations=8, log_every=1, eval_every=0, checkpoint_every=4))


@pytest.mark.parametrize("method", ["sim", "sid", "di"])
def test_two_processes_match_one_process(tmp_path, gmm_teacher, method):
    import submitit
    from workflow.jobs import run_group
    cfg = parse_config(_cfg(gmm_teacher, method))
    one = tmp_path / "one"
    assert distill(cfg, one)["world_size"] == 1

    two = tmp_path / "two"
    spec = dict(config=cfg.to_dict(), run_dir=str(two), owner="ddp", name=f"ddp-{method}",
                memberships=[{"experiment": "ddp"}])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    ex.update_parameters(tasks_per_node=2, timeout_min=10)
    job = ex.submit(run_group, [spec], f"sqlite:///{tmp_path / 'mlflow.db'}", [1000])
    records = job.results()
    assert len(records) == 2 and records[1] == []  # rank 1 trains but writes and reports nothing
    (rec,) = records[0]
    assert rec["status"] == "finished" and rec["world_size"] == 2 and rec["run_id"]

    a, b = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for key in ("loss_online", "loss_gen"):
        va = torch.tensor([r[key] for r in a if key in r], dtype=torch.float64)
        vb = torch.tensor([r[key] for r in b if key in r], dtype=torch.float64)
        assert len(va) == 8
        torch.testing.assert_close(vb, va, rtol=1e-4, atol=1e-6)
    sa = torch.load(one / "checkpoint.pt", weights_only=True)
    sb = torch.load(two / "checkpoint.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 8
    for net in ("G", "G_ema", "D_fake"):
        for k in sa[net]:
            torch.testing.assert_close(sb[net][k], sa[net][k], rtol=1e-4, atol=1e-5)
    # the runs really trained: G and D_fake both start as the teacher and have moved apart
    assert max((sb["G"][k] - sb["D_fake"][k.removeprefix("D.")]).abs().max() for k in sb["G"]) > 1e-4
    assert json.loads((two / "status.json").read_text())["world_size"] == 2


def test_shards_cover_the_global_batch_once():
    parts = [DistEnv(rank=r, world_size=4).shard(16) for r in range(4)]
    assert [list(range(16))[p] for p in parts] == [list(range(4 * r, 4 * r + 4)) for r in range(4)]
    with pytest.raises(ValueError, match="global batch 16 is not divisible by 3 processes"):
        DistEnv(rank=0, world_size=3).shard(16)


def test_uneven_batch_fails_before_the_run_directory_exists(tmp_path, gmm_teacher):
    cfg = parse_config(_cfg(gmm_teacher, "sim"))
    with pytest.raises(ValueError, match="not divisible"):
        distill(cfg, tmp_path / "r", dist=DistEnv(rank=0, world_size=3))
    assert not (tmp_path / "r").exists()
