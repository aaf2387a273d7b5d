"""The layers import downwards only: the paper's math (sim_core.core) imports no testbed, training loop, tracking,
workflow, MLflow, Snakemake or submitit; validating a config needs no torch; the loop imports no testbed until a
run loads one. Checked in fresh interpreters by listing sys.modules."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = ("sim_core.testbeds", "sim_core.train", "sim_core.tracking", "sim_core.nets", "sim_core.assets",
                     "workflow", "mlflow", "snakemake", "submitit", "torch_fidelity", "matplotlib", "pandas")


def _modules_after(code: str) -> set[str]:
    p = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return set(json.loads(p.stdout.strip().splitlines()[-1]))


def _under(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_the_core_imports_nothing_above_it():
    """Every module of sim_core.core (and the baselines, which are methods of the core), used: a loss built and
    evaluated on tensors."""
    code = ("import pkgutil, importlib, torch, sim_core.core as core, baselines.sid, baselines.diff_instruct\n"
            "for m in pkgutil.iter_modules(core.__path__): importlib.import_module('sim_core.core.' + m.name)\n"
            "from sim_core.core.methods import METHODS\n"
            "from sim_core.core.edm import EDMPrecond\n"
            "loss = METHODS.get('sid')(alpha=1.0).build()\n"
            "class Raw(torch.nn.Module):\n"  # a stand-in raw network F(x_in, c_noise, cond) = 0.5 x_in
            "    def forward(self, x, c_noise, cond=None, augment_labels=None): return 0.5 * x\n"
            "D = EDMPrecond(Raw())\n"
            "x0 = torch.randn(4, 3)\n"
            "assert loss(x0, None, D, D, torch.Generator().manual_seed(0)).shape == (4,)\n")
    modules = _modules_after(code)
    assert "torch" in modules and "sim_core.core.sim_loss" in modules and "baselines.sid" in modules
    leaked = [m for prefix in FORBIDDEN_IN_CORE for m in _under(modules, prefix)]
    assert not leaked, f"the core pulled in {leaked[:10]}"


def test_validating_configs_and_testbed_declarations_imports_no_torch():
    code = ("from sim_core.testbeds import TESTBEDS\n"
            "specs = [TESTBEDS.get(n) for n in TESTBEDS.names()]\n"
            "from sim_core.train.config import parse_config\n"
            "cfg = parse_config(dict(name='x', testbed=dict(kind='cifar10', teacher='t.pkl', conditional=True),\n"
            "                        method=dict(name='sim', distance='huber'), train=dict(kimg=1)))\n"
            "assert cfg.train.iterations == 4 and cfg.method.build().distance.delta == 1.0\n"
            "import sim_core.assets; assert 'teacher_cond' in sim_core.assets.manifest_names()\n")
    modules = _modules_after(code)
    assert not _under(modules, "torch"), "declaring testbeds or validating a config imported torch"
    assert "sim_core.testbeds.cifar10" in modules and "sim_core.testbeds.cifar10.testbed" not in modules


@pytest.mark.parametrize("module", ["sim_core.train.loop", "sim_core.train.config", "workflow.dag"])
def test_loop_and_dag_import_no_testbed_runtime(module):
    """The loop gets its testbed from the registry at run time; the DAG never loads one."""
    modules = _modules_after(f"import {module}")
    runtime = [m for m in modules if m.startswith("sim_core.testbeds.") and m.split(".")[-1] in
               ("testbed", "data", "classifier", "fidelity", "mixture", "metrics", "image_metrics", "inception",
                "edm_pickle", "edm_teacher", "base")]
    assert not runtime, runtime
    if module == "workflow.dag":
        assert not _under(modules, "torch")
