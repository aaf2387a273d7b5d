"""Baselines distilled in sim_core's loop: SiD (Zhou et al. 2024) and Diff-Instruct (Luo et al. 2023)."""
