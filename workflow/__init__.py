"""Workflow: the DAG that runs the distillation experiments and aggregates them into the paper's tables and figures."""
