"""Experiment tracking in MLflow: the client of one run (client.py), the workers that keep MLflow off the training
process (worker.py) and the MLflow server the SLURM profile starts (server.py). The training loop only sees an
object with ``log_records(records, up_to_step)``."""
