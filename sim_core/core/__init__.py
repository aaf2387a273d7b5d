"""The paper's math, torch only and no file I/O: EDM's preconditioning and Heun sampler, the one-step generator, the
distances of Table 4, time distributions, weightings, the psi-step loss, SIM's loss, the method registry and the
EMA. Nothing here imports a testbed, the training loop, MLflow, Snakemake or submitit (tests/core/test_layers.py)."""

SIGMA_DATA = 0.5  # EDM's sigma_data for data scaled to [-1, 1] (Karras et al. 2022, Table 1)
