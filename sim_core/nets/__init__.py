"""Raw networks by name. Every raw network has the signature ``F(x_in, c_noise, cond=None, augment_labels=None)``:
``sim_core.core.edm.EDMPrecond`` wraps it into the EDM denoiser and passes ``cond`` through without looking inside
(class labels for the toy and CIFAR-10 networks). Constructor kwargs are stored as ``init_kwargs`` so that a
network can be rebuilt from a teacher file."""
from __future__ import annotations

from sim_core.registry import Registry

NETWORKS = Registry("network")
NETWORKS.register("residual_mlp", "sim_core.nets.mlp:ResidualMLP")
NETWORKS.register("songunet", "sim_core.nets.songunet:SongUNet")


def build_network(name: str, **kwargs):
    return NETWORKS.build(name, **kwargs)


def network_name(model) -> str:
    """The registered name of a network's class (teacher files store it)."""
    for name in NETWORKS.names():
        if NETWORKS.get(name) is type(model):
            return name
    raise ValueError(f"network class {type(model).__name__} is not registered")


def dropout_settings(module) -> list:
    """Where a network keeps its dropout probability: every nn.Dropout's ``p`` and every numeric ``dropout``
    attribute of a submodule (NVIDIA's UNetBlock keeps ``self.dropout`` and calls F.dropout with it)."""
    import torch
    found = []
    for m in module.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            found.append((m, "p"))
        v = getattr(m, "dropout", None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            found.append((m, "dropout"))
    return found
