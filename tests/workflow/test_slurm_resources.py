"""What a cluster profile can ask for reaches the job's sbatch script: nodes (a run spanning nodes), typed GPUs, qos,
constraint, any other #SBATCH option and setup lines (module load, conda activate), key by key from the profile's
defaults, the scale config and --config; bad values are refused in one line."""
from __future__ import annotations

import pytest
import submitit

from sim_core.errors import ConfigError
from workflow.launch import slurm_parameters
from workflow.schema import Resources


def _sbatch(r: Resources, tmp_path) -> str:
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    ex.update_parameters(timeout_min=r.timeout_min, name="job", tasks_per_node=r.tasks_per_node, **slurm_parameters(r))
    return ex._executor._make_submission_file_text("python -c pass", "uid")


def test_every_setting_reaches_the_sbatch_script(tmp_path):
    r = Resources(nodes=2, tasks_per_node=4, gpus_per_node=4, gpu_type="a100", qos="high", constraint="ib&a100",
                  partition="gpu", account="proj", timeout_min=2880, mem_gb=128, cpus_per_task=8,
                  sbatch_extra={"reservation": "r1", "exclusive": True}, setup=["module load cuda/12.4",
                                                                              "conda activate sim-harness"])
    text = _sbatch(r, tmp_path)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gres=gpu:a100:4",
                 "#SBATCH --qos=high", "#SBATCH --constraint='ib&a100'", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj", "#SBATCH --reservation=r1", "#SBATCH --exclusive", "#SBATCH --time=2880",
                 "#SBATCH --mem=128GB", "#SBATCH --cpus-per-task=8"):
        assert line in text.splitlines(), line
    setup = text.split("# setup\n")[1].split("\n\n")[0].splitlines()
    assert setup == ["module load cuda/12.4", "conda activate sim-harness"]
    assert "#SBATCH --gres=gpu:2" in _sbatch(Resources(gpus_per_node=2), tmp_path).splitlines()  # untyped
    assert "--gres" not in _sbatch(Resources(), tmp_path)


def test_defaults_then_scale_then_config_key_by_key(tmp_path, monkeypatch):
    from pathlib import Path

    from workflow.dag import load
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    S, _, _ = load({"scale": "smoke", "results_dir": str(tmp_path / "r"),
                    "default_resources": {"distill": {"qos": "normal", "partition": "cpu", "setup": ["module load x"]}},
                    "resources": {"distill": {"qos": "high", "nodes": 2}}})
    r = S.job_resources("distill")
    assert (r.qos, r.partition, r.nodes, r.setup) == ("high", "cpu", 2, ["module load x"])


@pytest.mark.parametrize("bad,expected", [
    (dict(qos="high priority"), "qos"), (dict(gpu_type=""), "gpu_type"), (dict(nodes=0), "nodes"),
    (dict(sbatch_extra={"exclusive": [1]}), "sbatch_extra"), (dict(setup="module load x"), "setup"),
    (dict(gpus=4), "gpus: Extra inputs are not permitted"),
])
def test_bad_resources_are_one_line(tmp_path, bad, expected):
    import yaml

    from workflow.schema import load_scale
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(dict(scale="smoke", experiments={}, resources={"distill": bad})))
    with pytest.raises(ConfigError) as e:
        load_scale(path)
    assert expected in str(e.value) and "\n" not in str(e.value)
