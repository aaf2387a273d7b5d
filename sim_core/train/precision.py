"""The speed switches of a run (the config's ``perf`` section), applied in one place.

- ``configure_backends``: TF32 for fp32 matmuls and cuDNN convolutions, and cudnn.benchmark. The defaults are the
  reference code's: EDM/SiD/DI ``training_loop`` set ``allow_tf32 = False`` on both, forbid reduced-precision fp16
  reductions, and set ``cudnn.benchmark = True`` (docs/reference-code.md#sids-loop).
- ``autocast``: bfloat16 autocast around the network passes. Autocast lowers only matmul/convolution-class ops;
  the elementwise EDM preconditioning (c_skip x + c_out F, with F in bf16 promoted back) and the losses take fp32
  inputs and so stay fp32. Backward runs outside the context, as torch.amp prescribes. bf16 needs no loss scaling
  (its exponent range is fp32's), unlike the reference code's optional fp16.
- ``to_memory_format``: channels_last for the networks' 4-D weights and the 4-D image batches.
- ``micro_batches``: the slices of a rank's shard for gradient accumulation.
- ``checkpointing``: activation (gradient) checkpointing inside networks that support it (diffusers models: each
  transformer block's activations recomputed in backward), for the teacher and D_psi (backpropagated to their
  input) as for G: memory for compute (bench_t2i.py: a SIM iteration 11 F -> 15 F).
"""
from __future__ import annotations

import contextlib

import torch


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def configure_backends(perf, device) -> dict:
    """Set the global backend flags for ``perf`` on a CUDA device; returns the flags set (empty on CPU, where
    TF32 and cuDNN do not apply)."""
    if _device(device).type != "cuda":
        return {}
    flags = {
        "torch.backends.cuda.matmul.allow_tf32": bool(perf.tf32),
        "torch.backends.cudnn.allow_tf32": bool(perf.tf32),
        # EDM training_loop.py: reduced-precision fp16 reductions off, whatever the other switches
        "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction": False,
        "torch.backends.cudnn.benchmark": bool(perf.cudnn_benchmark),
    }
    torch.backends.cuda.matmul.allow_tf32 = flags["torch.backends.cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = flags["torch.backends.cudnn.allow_tf32"]
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cudnn.benchmark = flags["torch.backends.cudnn.benchmark"]
    return flags


def autocast(perf, device):
    """bfloat16 autocast on ``device``'s type when ``perf.bf16`` is set (CPU too, for tests); a no-op otherwise."""
    if not perf.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device(device).type, dtype=torch.bfloat16)


def to_memory_format(obj, perf):
    """channels_last for a module (its 4-D parameters and buffers) or a 4-D tensor when ``perf.channels_last``
    is set; anything else is returned unchanged. A module is converted in place and returned."""
    if not perf.channels_last:
        return obj
    if isinstance(obj, torch.nn.Module):
        return obj.to(memory_format=torch.channels_last)
    if torch.is_tensor(obj) and obj.ndim == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    return obj


def checkpointing(net: torch.nn.Module, perf) -> None:
    """Turn on activation checkpointing in every submodule that supports it, when ``perf.checkpointing``."""
    if not perf.checkpointing:
        return
    found = [m for m in net.modules() if getattr(m, "_supports_gradient_checkpointing", False)]
    if not found:
        from sim_core.errors import ConfigError
        raise ConfigError(f"perf.checkpointing: the {type(net).__name__} network has no part that supports it "
                          "(diffusers models do); set perf.checkpointing: false")
    for m in found:
        m.enable_gradient_checkpointing()


def check_grad_accum(shard_size: int, grad_accum: int, what: str = "the per-process batch") -> int:
    """The micro-batch size; a shard that does not split into ``grad_accum`` equal parts is a one-line error."""
    from sim_core.errors import ConfigError
    if grad_accum < 1 or shard_size % grad_accum:
        raise ConfigError(f"perf.grad_accum={grad_accum} does not divide {what} of {shard_size} samples "
                          "(optim.batch_size / processes): choose a divisor")
    return shard_size // grad_accum


def micro_batches(shard_size: int, grad_accum: int) -> list[slice]:
    """``grad_accum`` contiguous, equal slices of a shard of ``shard_size`` samples (indices within the shard)."""
    n = check_grad_accum(shard_size, grad_accum)
    return [slice(i * n, (i + 1) * n) for i in range(grad_accum)]
