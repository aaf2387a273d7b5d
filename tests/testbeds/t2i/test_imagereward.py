"""ImageReward natively on transformers 5, on tiny BLIP networks: a checkpoint written in ImageReward.pt's layout
(BLIP's ViT in timm's names, MED's BERT names, the head, BLIP's unused projections) converts and loads exactly, and
the reward is the head on the [CLS] state of the text encoder cross-attending to the image, z-normalised."""
from __future__ import annotations

import pytest
import torch

from sim_core.errors import CheckpointError
from sim_core.testbeds.t2i.scorers import (IMAGEREWARD_MEAN, IMAGEREWARD_STD, AestheticHead, ImageRewardScorer,
                                           load_imagereward)

from test_scorers import PROCESSOR, images

WORDS = ["a", "red", "bicycle", "green", "apples", "harbour", "boats"]


def tiny():
    from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig, CLIPImageProcessorPil
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)})
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    vc = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=32, patch_size=8, layer_norm_eps=1e-6)
    tc = BlipTextConfig(vocab_size=len(tok), hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=40,
                        bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    vision, text = BlipVisionModel(vc).eval(), BlipTextModel(tc, add_pooling_layer=False).eval()
    head = AestheticHead(24).eval()
    with torch.no_grad():  # weights that carry signal (a fresh tiny BLIP ViT's tokens are nearly constant)
        for p in [*vision.parameters(), *text.parameters(), *head.parameters()]:
            p.normal_(0.0, 0.3)
    return vision, text, head, tok, CLIPImageProcessorPil(**PROCESSOR), vc, tc


def imagereward_layout(vision, text, head) -> dict:
    """ImageReward.pt's names for these weights (BLIP's vit.py in timm's layout; MED as BERT), and its extras."""
    v = vision.state_dict()
    out = {"blip.visual_encoder.cls_token": v["embeddings.class_embedding"],
           "blip.visual_encoder.pos_embed": v["embeddings.position_embedding"],
           "blip.visual_encoder.norm.weight": v["post_layernorm.weight"],
           "blip.visual_encoder.norm.bias": v["post_layernorm.bias"]}
    for p in ("weight", "bias"):
        out[f"blip.visual_encoder.patch_embed.proj.{p}"] = v[f"embeddings.patch_embedding.{p}"]
        for n in range(len(vision.encoder.layers)):
            L, B = f"encoder.layers.{n}", f"blip.visual_encoder.blocks.{n}"
            out[f"{B}.norm1.{p}"], out[f"{B}.norm2.{p}"] = v[f"{L}.layer_norm1.{p}"], v[f"{L}.layer_norm2.{p}"]
            out[f"{B}.attn.qkv.{p}"] = v[f"{L}.self_attn.qkv.{p}"]
            out[f"{B}.attn.proj.{p}"] = v[f"{L}.self_attn.projection.{p}"]
            out[f"{B}.mlp.fc1.{p}"], out[f"{B}.mlp.fc2.{p}"] = v[f"{L}.mlp.fc1.{p}"], v[f"{L}.mlp.fc2.{p}"]
    out.update({f"blip.text_encoder.{k}": t for k, t in text.state_dict().items()})
    out["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    out.update({f"mlp.{k}": t for k, t in head.state_dict().items()})
    out.update({"blip.vision_proj.weight": torch.zeros(8, 32), "blip.vision_proj.bias": torch.zeros(8),
                "blip.text_proj.weight": torch.zeros(8, 24), "blip.text_proj.bias": torch.zeros(8)})
    return {k: t.clone() for k, t in out.items()}


def test_imagereward_layout_loads_and_scores_by_its_formula(tmp_path):
    vision, text, head, tok, proc, vc, tc = tiny()
    sd = imagereward_layout(vision, text, head)
    torch.save(sd, tmp_path / "ImageReward.pt")
    scorer = ImageRewardScorer.from_state_dict(torch.load(tmp_path / "ImageReward.pt", weights_only=True),
                                               vc, tc, tok, proc)
    prompts, ims = ["a red bicycle", "green apples", "a harbour boats"], images()
    got = scorer(ims, prompts)
    with torch.no_grad():  # by hand, with the source networks
        pix = proc(images=[im.permute(1, 2, 0).numpy() for im in ims], return_tensors="pt")["pixel_values"]
        states = vision(pixel_values=pix).last_hidden_state
        t = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        assert t["input_ids"].shape == (3, 35) and (t["input_ids"][:, 0] == tok.cls_token_id).all()
        cls = text(input_ids=t["input_ids"], attention_mask=t["attention_mask"], encoder_hidden_states=states,
                   encoder_attention_mask=torch.ones(states.shape[:2], dtype=torch.long)).last_hidden_state[:, 0]
        raw = head(cls)
    assert got.shape == (3,) and torch.allclose(got, (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD, atol=1e-6)
    assert torch.allclose(got * IMAGEREWARD_STD + IMAGEREWARD_MEAN, raw, atol=1e-6)  # the z-normalisation undone
    assert (scorer(ims, prompts[::-1]) - got).abs().max() > 1e-5  # the prompt matters
    plain = torch.stack([torch.zeros(3, 40, 48), torch.full((3, 40, 48), 255.0), ims[0].float()]).to(torch.uint8)
    assert (scorer(plain, prompts[:1] * 3).diff().abs() > 1e-6).all()  # so does the image, through cross-attention


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.update({"blip.itm_head.weight": torch.zeros(2, 24)}), r"1 unknown keys \(blip.itm_head.weight\)"),
    (lambda sd: sd.pop("blip.visual_encoder.blocks.1.mlp.fc2.bias"),
     r"does not fit its BLIP ViT: 1 parameters without a value \(encoder.layers.1.mlp.fc2.bias\)"),
    (lambda sd: sd.update({"mlp.layers.7.bias": torch.zeros(3)}), r"does not fit its reward head: 1 shape mismatches"),
])
def test_a_checkpoint_that_does_not_fit_is_named(edit, message):
    vision, text, head, tok, proc, vc, tc = tiny()
    sd = imagereward_layout(vision, text, head)
    edit(sd)
    with pytest.raises(CheckpointError, match=message):
        ImageRewardScorer.from_state_dict(sd, vc, tc, tok, proc)


def test_files_that_are_no_imagereward_are_refused(tmp_path):
    (tmp_path / "tok").mkdir()
    with pytest.raises(CheckpointError, match="ImageReward checkpoint not found: .*none.pt"):
        load_imagereward(tmp_path / "none.pt", tmp_path / "tok")
    torch.save({"layers.0.weight": torch.zeros(1)}, tmp_path / "aesthetic.pth")
    with pytest.raises(CheckpointError, match=r"aesthetic.pth is not an ImageReward checkpoint \(no blip.\* keys\)"):
        load_imagereward(tmp_path / "aesthetic.pth", tmp_path / "tok")
