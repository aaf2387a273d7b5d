"""Data parallelism over N processes (the paper trains on 4 GPUs): torch.distributed, one process per device.

Every rank draws the randomness of the *global* batch from the same seeded generator and keeps its own
contiguous shard, so an N-process run sees exactly the samples, times and noise of a 1-process run with the
same global batch. Each rank's loss is the mean over its shard; gradients are averaged across ranks (an
all-reduce of one flat buffer per network, as DDP's buckets do), so the update is the global-batch mean up to
float summation order. DistributedDataParallel wrappers are not used: in one iteration the online network is
both trained (psi-step) and used frozen but differentiable in its input (theta-step), which DDP's
reducer does not expect. Rank 0 alone writes files, evaluates and talks to MLflow.

The process group comes from the environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, as set by torchrun
or by ``submitit.helpers.TorchDistributedEnvironment().export()``); gloo on CPU, NCCL on CUDA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the device index on this node (one process per GPU)

    def device(self, device: str) -> torch.device:
        """'cuda' means this process's own GPU in a data-parallel run."""
        d = torch.device(device)
        return torch.device("cuda", self.local_rank) if d.type == "cuda" and self.active and d.index is None else d

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, global_batch: int) -> slice:
        """This rank's contiguous part of a global batch (the batch must divide evenly)."""
        if global_batch % self.world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {self.world_size} processes")
        n = global_batch // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over ranks (each rank's value is the mean over an equal shard)."""
        if not self.active:
            return value
        v = value.detach().clone().to(torch.float64).reshape(1)
        dist.all_reduce(v)
        return (v / self.world_size).reshape(()).to(value.dtype)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on one (e.g. a stop signal seen by one rank)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def average_gradients(self, module: torch.nn.Module) -> None:
        """Replace each parameter's gradient by its mean over ranks: one all-reduce of a flat buffer."""
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_environment(device: str = "cpu") -> DistEnv:
    """Join the process group described by the environment, or run alone if WORLD_SIZE is absent or 1."""
    from sim_core.errors import ConfigError
    names = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")
    values = {k: os.environ[k] for k in names if k in os.environ}
    bad = [f"{k}={v!r}" for k, v in values.items() if not v.isdigit()]
    if bad:
        raise ConfigError(f"the process-group environment must hold whole numbers: {', '.join(bad)}")
    world = int(values.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK") if k not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with "
                              "torchrun or a multi-task submitit job")
        if int(os.environ["RANK"]) >= world:
            raise ConfigError(f"RANK={os.environ['RANK']} is not below WORLD_SIZE={world}")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if str(device).startswith("cuda"):
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))
