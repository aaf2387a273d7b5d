"""Original PixArt names (SIM's released generator) to diffusers names, on a tiny PixArtTransformer2DModel: a
checkpoint written in the original layout by hand loads into the diffusers network and gives its outputs exactly;
every key that does not fit is named."""
from __future__ import annotations

import pytest
import torch

from sim_core.errors import CheckpointError
from sim_core.testbeds.t2i.pixart_keys import convert, load_sim_generator

from test_edm_pixart import text, tiny_pixart


def original_layout(model, prefix="module.") -> dict:
    """The diffusers network's weights under PixArt's own names (PixArt's PixArt class: x_embedder, t_embedder,
    t_block, y_embedder, blocks with fused attn.qkv and cross_attn.kv_linear, final_layer), plus the two entries
    diffusers has no parameter for."""
    sd = model.state_dict()
    out = {}
    for p in ("weight", "bias"):
        out[f"x_embedder.proj.{p}"] = sd[f"pos_embed.proj.{p}"]
        out[f"t_embedder.mlp.0.{p}"] = sd[f"adaln_single.emb.timestep_embedder.linear_1.{p}"]
        out[f"t_embedder.mlp.2.{p}"] = sd[f"adaln_single.emb.timestep_embedder.linear_2.{p}"]
        out[f"t_block.1.{p}"] = sd[f"adaln_single.linear.{p}"]
        out[f"y_embedder.y_proj.fc1.{p}"] = sd[f"caption_projection.linear_1.{p}"]
        out[f"y_embedder.y_proj.fc2.{p}"] = sd[f"caption_projection.linear_2.{p}"]
        out[f"final_layer.linear.{p}"] = sd[f"proj_out.{p}"]
        for n in range(len(model.transformer_blocks)):
            b = f"transformer_blocks.{n}"
            out[f"blocks.{n}.attn.qkv.{p}"] = torch.cat([sd[f"{b}.attn1.to_{x}.{p}"] for x in "qkv"])
            out[f"blocks.{n}.attn.proj.{p}"] = sd[f"{b}.attn1.to_out.0.{p}"]
            out[f"blocks.{n}.cross_attn.q_linear.{p}"] = sd[f"{b}.attn2.to_q.{p}"]
            out[f"blocks.{n}.cross_attn.kv_linear.{p}"] = torch.cat([sd[f"{b}.attn2.to_{x}.{p}"] for x in "kv"])
            out[f"blocks.{n}.cross_attn.proj.{p}"] = sd[f"{b}.attn2.to_out.0.{p}"]
            out[f"blocks.{n}.mlp.fc1.{p}"] = sd[f"{b}.ff.net.0.proj.{p}"]
            out[f"blocks.{n}.mlp.fc2.{p}"] = sd[f"{b}.ff.net.2.{p}"]
    for n in range(len(model.transformer_blocks)):
        out[f"blocks.{n}.scale_shift_table"] = sd[f"transformer_blocks.{n}.scale_shift_table"]
    out["final_layer.scale_shift_table"] = sd["scale_shift_table"]
    out["y_embedder.y_embedding"] = torch.randn(6, 32)
    out["pos_embed"] = torch.zeros(1, 16, 24)
    return {prefix + k: v.clone() for k, v in out.items()}


def test_the_fused_projections_split_in_order():
    q, k, v = (torch.full((24, 24), float(i)) for i in range(3))
    conv = convert({"blocks.3.attn.qkv.weight": torch.cat([q, k, v]),
                    "blocks.3.cross_attn.kv_linear.bias": torch.arange(48.0)})
    sd = conv.state_dict
    assert [float(sd[f"transformer_blocks.3.attn1.to_{x}.weight"][0, 0]) for x in "qkv"] == [0.0, 1.0, 2.0]
    assert sd["transformer_blocks.3.attn2.to_k.bias"].tolist() == list(range(24))
    assert sd["transformer_blocks.3.attn2.to_v.bias"].tolist() == list(range(24, 48))
    assert conv.unknown == [] and conv.prefix == ""


def test_sims_released_layout_loads_into_the_diffusers_network(tmp_path):
    source, target = tiny_pixart(seed=0), tiny_pixart(seed=1)
    path = tmp_path / "sim_generator.pt"
    original = original_layout(source)
    torch.save({"ema": original}, path)
    conv = load_sim_generator(path, target)
    assert conv.prefix == "module." and conv.unknown == []
    assert set(conv.set_aside) == {"y_embedder.y_embedding", "pos_embed"}
    assert torch.equal(conv.null_caption, original["module.y_embedder.y_embedding"])
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([440, 10]), text()
    kw = dict(encoder_hidden_states=cond.states, timestep=t, encoder_attention_mask=cond.mask,
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    with torch.no_grad():
        assert torch.equal(target(x, **kw)[0], source(x, **kw)[0])


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("module.blocks.1.mlp.fc2.weight"), r"1 parameters without a value \(transformer_blocks.1.ff"),
    (lambda sd: sd.update({"module.blocks.0.attn.rope.weight": torch.zeros(1)}),
     r"1 unknown keys \(module.blocks.0.attn.rope.weight\)"),
    (lambda sd: sd.update({"module.blocks.2.mlp.fc1.weight": torch.zeros(96, 24)}),
     r"1 keys the network does not have \(transformer_blocks.2.ff.net.0.proj.weight\)"),
    (lambda sd: sd.update({"module.t_block.1.bias": torch.zeros(5)}), r"1 shape mismatches \(adaln_single.linear.bias"),
])
def test_every_key_that_does_not_fit_is_named(tmp_path, edit, message):
    sd = original_layout(tiny_pixart())
    edit(sd)
    path = tmp_path / "g.pt"
    torch.save({"ema": sd}, path)
    with pytest.raises(CheckpointError, match=message):
        load_sim_generator(path, tiny_pixart())


def test_a_file_that_is_no_sim_generator_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="SIM generator not found: .*none.pt"):
        load_sim_generator(tmp_path / "none.pt", tiny_pixart())
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="SIM generator .*junk.pt is corrupt or not a torch file"):
        load_sim_generator(tmp_path / "junk.pt", tiny_pixart())
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="SIM generator .*list.pt holds a list, not a dict of tensors"):
        load_sim_generator(tmp_path / "list.pt", tiny_pixart())
    torch.save({"G": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"has no 'ema' state dict \(found: \['G'\]\)"):
        load_sim_generator(tmp_path / "other.pt", tiny_pixart())
