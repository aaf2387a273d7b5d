"""Original PixArt-alpha parameter names (PixArt's own code, and SIM's released generator: ``torch.load(path)['ema']``
with a DDP ``module.`` prefix) to diffusers' ``PixArtTransformer2DModel`` names. Every key is accounted for: a key
neither converted nor set aside with a reason, or a diffusers parameter left without a value, is an error naming
them (SIM's own loader passes strict=False and would ignore both)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sim_core.errors import CheckpointError
from sim_core.files import load_checked
from sim_core.testbeds.t2i.state_dicts import load_exactly

ROOTS = ("x_embedder", "t_embedder", "t_block", "y_embedder", "blocks", "final_layer", "pos_embed", "csize_embedder",
         "ar_embedder")

RENAMES = [  # (original, diffusers), whole-name patterns; {n} is a block index
    ("x_embedder.proj.{p}", "pos_embed.proj.{p}"),
    ("t_embedder.mlp.0.{p}", "adaln_single.emb.timestep_embedder.linear_1.{p}"),
    ("t_embedder.mlp.2.{p}", "adaln_single.emb.timestep_embedder.linear_2.{p}"),
    ("t_block.1.{p}", "adaln_single.linear.{p}"),
    ("y_embedder.y_proj.fc1.{p}", "caption_projection.linear_1.{p}"),
    ("y_embedder.y_proj.fc2.{p}", "caption_projection.linear_2.{p}"),
    ("final_layer.linear.{p}", "proj_out.{p}"),
    ("final_layer.scale_shift_table", "scale_shift_table"),
    ("blocks.{n}.scale_shift_table", "transformer_blocks.{n}.scale_shift_table"),
    ("blocks.{n}.attn.proj.{p}", "transformer_blocks.{n}.attn1.to_out.0.{p}"),
    ("blocks.{n}.cross_attn.q_linear.{p}", "transformer_blocks.{n}.attn2.to_q.{p}"),
    ("blocks.{n}.cross_attn.proj.{p}", "transformer_blocks.{n}.attn2.to_out.0.{p}"),
    ("blocks.{n}.mlp.fc1.{p}", "transformer_blocks.{n}.ff.net.0.proj.{p}"),
    ("blocks.{n}.mlp.fc2.{p}", "transformer_blocks.{n}.ff.net.2.{p}"),
]
SPLITS = [  # fused projections, split along dim 0 in this order
    ("blocks.{n}.attn.qkv.{p}", ["transformer_blocks.{n}.attn1.to_q.{p}", "transformer_blocks.{n}.attn1.to_k.{p}",
                                 "transformer_blocks.{n}.attn1.to_v.{p}"]),
    ("blocks.{n}.cross_attn.kv_linear.{p}", ["transformer_blocks.{n}.attn2.to_k.{p}",
                                             "transformer_blocks.{n}.attn2.to_v.{p}"]),
]
SET_ASIDE = {  # original keys with no diffusers parameter, and why
    "y_embedder.y_embedding": "PixArt's learned null caption (120 x caption_channels); diffusers' CFG encodes \"\" "
                              "instead: returned as null_caption",
    "pos_embed": "the fixed sin-cos position table; diffusers computes its own",
}


def _pattern(template: str) -> re.Pattern:
    body = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{body}$")


_RENAMES = [(_pattern(a), b) for a, b in RENAMES]
_SPLITS = [(_pattern(a), b) for a, b in SPLITS]


@dataclass
class Conversion:
    state_dict: dict = field(default_factory=dict)  # diffusers names
    set_aside: dict = field(default_factory=dict)   # original key -> reason
    unknown: list = field(default_factory=list)     # original keys nothing explains
    prefix: str = ""                                # what was stripped before the original names
    null_caption: torch.Tensor | None = None


def _strip_prefix(keys) -> str:
    """The common prefix before PixArt's own names (``module.``, a wrapper's attribute, or nothing)."""
    prefixes = set()
    for k in keys:
        m = re.match(r"^(.*?)(?:%s)(?:\.|$)" % "|".join(ROOTS), k)
        prefixes.add(m.group(1) if m else None)
    if None in prefixes or len(prefixes) != 1:
        return ""
    return prefixes.pop()


def convert(original: dict) -> Conversion:
    out = Conversion(prefix=_strip_prefix(original))
    for key, value in original.items():
        name = key[len(out.prefix):]
        if name in SET_ASIDE:
            out.set_aside[name] = SET_ASIDE[name]
            if name == "y_embedder.y_embedding":
                out.null_caption = value
            continue
        for pat, target in _RENAMES:
            if m := pat.match(name):
                out.state_dict[target.format(**m.groupdict())] = value
                break
        else:
            for pat, targets in _SPLITS:
                if m := pat.match(name):
                    if value.shape[0] % len(targets):
                        raise CheckpointError(f"{key}: {tuple(value.shape)} does not split into {len(targets)}")
                    for t, part in zip(targets, value.chunk(len(targets), dim=0)):
                        out.state_dict[t.format(**m.groupdict())] = part.clone()
                    break
            else:
                out.unknown.append(key)
    return out


def load_original_into(model: torch.nn.Module, original: dict, source: str = "the checkpoint") -> Conversion:
    """Convert and load every parameter of ``model`` (a diffusers PixArtTransformer2DModel); any key left over on
    either side is a CheckpointError listing them."""
    conv = convert(original)
    load_exactly(model, conv.state_dict, f"{source} does not fit the PixArt network", unknown=conv.unknown)
    return conv


def load_sim_generator(path, model: torch.nn.Module) -> Conversion:
    """SIM's released one-step generator: ``torch.load(path)['ema']`` in original PixArt names."""
    p = Path(path)
    data = load_checked(p, "SIM generator")
    if not isinstance(data.get("ema"), dict):
        raise CheckpointError(f"SIM generator {p} has no 'ema' state dict (found: {sorted(map(str, data))[:6]})")
    return load_original_into(model, data["ema"], source=f"SIM generator {p}")
