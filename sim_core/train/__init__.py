"""The training layer: the typed run config (config.py), the loop of Algorithm 1 (loop.py) and what lives beside it:
run directory and metrics log, checkpoint and RNG state, schedule, signals, data parallelism, precision switches,
EDM's augmentation of the psi-step, provenance, snapshot evaluation and summaries."""
