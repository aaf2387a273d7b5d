"""The aesthetic predictor and PickScore on tiny CLIP models in transformers' real classes, saved to and loaded from
local folders in the real layouts: the numbers against their formulas (the head is affine in the normalised
embedding; PickScore is logit_scale.exp() times the cosine), and files of the wrong kind refused in one line."""
from __future__ import annotations

import math

import pytest
import torch

from sim_core.errors import CheckpointError, ConfigError
from sim_core.testbeds.t2i.scorers import AestheticHead, AestheticScorer, PickScorer

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8, projection_dim=16)
PROCESSOR = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def images(n=3, seed=0, h=40, w=48):
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def clip_tokenizer():
    from transformers import CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


@pytest.fixture
def aesthetic_files(tmp_path):
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)).save_pretrained(tmp_path / "clip")
    CLIPImageProcessorPil(**PROCESSOR).save_pretrained(tmp_path / "clip")
    head = AestheticHead(16)
    torch.save(head.state_dict(), tmp_path / "head.pth")  # a plain state dict, as the published .pth
    return tmp_path / "clip", tmp_path / "head.pth"


def test_the_aesthetic_score_is_affine_in_the_normalised_clip_embedding(aesthetic_files):
    clip_dir, head_path = aesthetic_files
    scorer = AestheticScorer.from_files(clip_dir, head_path)
    ims = images()
    got = scorer(ims)
    pixels = scorer.processor(images=[im.permute(1, 2, 0).numpy() for im in ims], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (3, 3, 32, 32)  # shortest side to 32, centre crop
    with torch.no_grad():
        e = scorer.vision(pixel_values=pixels).image_embeds
        w, b = scorer.head.affine()
        expected = (e / e.norm(dim=-1, keepdim=True)) @ w + b
    assert got.shape == (3,) and torch.allclose(got, expected, atol=1e-5)
    assert len(set(got.tolist())) == 3  # different images, different scores
    assert torch.equal(scorer(ims), got)  # eval mode: the dropouts do nothing


def test_pickscore_is_logit_scale_times_the_cosine(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
    tok = clip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)).save_pretrained(tmp_path / "m")
    CLIPImageProcessorPil(**PROCESSOR).save_pretrained(tmp_path / "p")
    tok.save_pretrained(tmp_path / "p")
    scorer = PickScorer.from_folders(tmp_path / "m", tmp_path / "p")
    prompts = ["a red bicycle", "green apples", "a harbour"]
    ims = images()
    got = scorer(ims, prompts)
    scale = scorer.model.logit_scale.exp().item()
    assert math.isclose(scale, math.exp(2.6592), rel_tol=1e-5)  # CLIPConfig.logit_scale_init_value, saved and loaded
    assert torch.allclose(got["score"], scale * got["cosine"])
    assert got["cosine"].abs().max() <= 1
    with torch.no_grad():  # the cosine by hand, image i with prompt i
        pix = scorer.processor.image_processor(images=[im.permute(1, 2, 0).numpy() for im in ims],
                                               return_tensors="pt")["pixel_values"]
        t = scorer.processor.tokenizer(prompts, padding=True, return_tensors="pt")
        a = scorer.model.get_image_features(pixel_values=pix)
        c = scorer.model.get_text_features(**t)
        a = a if isinstance(a, torch.Tensor) else a.pooler_output
        c = c if isinstance(c, torch.Tensor) else c.pooler_output
        cos = torch.nn.functional.cosine_similarity(a, c, dim=-1)
    assert torch.allclose(got["cosine"], cos, atol=1e-6)
    swapped = scorer(ims, prompts[::-1])["cosine"]
    assert not torch.allclose(swapped, got["cosine"])  # the prompt matters
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        scorer(ims, prompts[:2])
    with pytest.raises(ValueError, match="scorers take uint8 images"):
        scorer(ims.float(), prompts)


def test_scorer_files_of_the_wrong_kind_are_refused(aesthetic_files, tmp_path):
    clip_dir, _ = aesthetic_files
    torch.save({"fc.weight": torch.zeros(1, 16)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth is not an aesthetic-predictor head .*found \['fc.weight'\]"):
        AestheticScorer.from_files(clip_dir, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00junk")
    with pytest.raises(CheckpointError, match="aesthetic head .*junk.pth is corrupt or not a torch file"):
        AestheticHead.from_file(tmp_path / "junk.pth")
    torch.save(AestheticHead(768).state_dict(), tmp_path / "vitl.pth")  # the real head's size on a tiny CLIP
    with pytest.raises(ConfigError, match="the aesthetic head takes 768-d embeddings, the CLIP vision model gives 16"):
        AestheticScorer.from_files(clip_dir, tmp_path / "vitl.pth")
    with pytest.raises(ConfigError, match="CLIP folder .*nowhere does not exist"):
        AestheticScorer.from_files(tmp_path / "nowhere", tmp_path / "vitl.pth")
    with pytest.raises(ConfigError, match="PickScore model folder .*nowhere does not exist"):
        PickScorer.from_folders(tmp_path / "nowhere", clip_dir)
