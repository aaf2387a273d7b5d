"""The toy text-to-image pieces: prompts from templates (some held out), a tiny T5 asset in transformers' layout,
the digits as exact latents, and a PixArt teacher trained here with PixArt's DDPM objective whose loss falls and
whose folder reloads to the same network."""
from __future__ import annotations

import json

import pytest
import torch

from sim_core.testbeds.t2i.cond import TextCond
from sim_core.testbeds.t2i.teacher import alphas_cumprod, sample_teacher, train_toy_teacher
from sim_core.testbeds.t2i.text import TextEncoder
from sim_core.testbeds.t2i.toy import (DIGIT_NAMES, HELDOUT_TEMPLATES, all_prompts, build_toy_t5,
                                       digit_latents, vocabulary)


@pytest.fixture(scope="module")
def toy_t5(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets") / "toy_t5"
    build_toy_t5(d, seed=0)
    return d


def test_templates_cover_every_digit_and_keep_some_for_evaluation():
    train, held = all_prompts(), all_prompts(HELDOUT_TEMPLATES)
    assert len(train) == 40 and len(held) == 20 and not set(p for _, p in train) & set(p for _, p in held)
    assert train[7 * 4] == (7, "a handwritten seven") and held[3 * 2 + 1] == (3, "a three in ink")
    assert set(DIGIT_NAMES) <= set(vocabulary())


def test_the_toy_t5_encodes_every_prompt_distinctly_and_without_unknown_words(toy_t5):
    meta = json.loads((toy_t5 / "toy_t5.json").read_text())
    assert meta["kind"] == "toy_t5" and meta["parameters"] < 50_000
    text = TextEncoder.from_folders(toy_t5 / "tokenizer", toy_t5 / "text_encoder")
    prompts = [p for _, p in all_prompts() + all_prompts(HELDOUT_TEMPLATES)]
    ids = text.tokenizer(prompts)["input_ids"]
    assert all(text.tokenizer.unk_token_id not in row for row in ids)  # the vocabulary covers the templates
    cond = text(prompts)
    flat = (cond.states * cond.mask[..., None]).flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(len(prompts)) * 1e9).min() > 1e-3  # no two prompts coincide
    assert not list(toy_t5.parent.glob(".toy_t5.*"))  # written atomically: no temporary folder left


def test_digits_become_exact_four_channel_latents():
    assert digit_latents()[0].shape == (1438, 4, 4, 4)  # the digits testbed's training split, as its teachers
    z, y = digit_latents("all")
    assert z.shape == (1797, 4, 4, 4) and y.shape == (1797,) and z.min() == -1 and z.max() == 1
    x = torch.nn.functional.pixel_shuffle(z, 2)[:, 0]
    from sklearn.datasets import load_digits
    assert torch.equal(((x + 1) * 8).round(), torch.tensor(load_digits().images, dtype=torch.float32))


def test_the_teacher_learns_with_pixarts_objective_and_reloads(toy_t5, tmp_path):
    from diffusers import PixArtTransformer2DModel
    small = dict(num_layers=2, attention_head_dim=8, cross_attention_dim=32)
    meta = train_toy_teacher(tmp_path / "teacher", toy_t5, iterations=150, batch_size=64, log_every=25, dit=small)
    curve = [c["loss"] for c in meta["loss_curve"]]
    assert curve[0] > 0.8 and min(curve[-3:]) < 0.75 * curve[0], curve  # epsilon-MSE starts near 1 and falls
    net = PixArtTransformer2DModel.from_pretrained(tmp_path / "teacher" / "transformer").eval()
    assert net.config.caption_channels == 32 and net.config.out_channels == 4
    saved = json.loads((tmp_path / "teacher" / "teacher.json").read_text())
    assert saved["iterations"] == 150 and saved["prompts"][0] == "a handwritten zero"
    # multi-step sampling as PixArt's pipeline: DPM-Solver++ with classifier-free guidance
    text = TextEncoder.from_folders(toy_t5 / "tokenizer", toy_t5 / "text_encoder")
    cond, null = text(["a handwritten seven", "the digit three"]), text([""])
    draw = [sample_teacher(net, cond, null, steps=4, guidance=g, generator=torch.Generator().manual_seed(1))
            for g in (0.0, 2.0, 2.0)]
    assert draw[0].shape == (2, 4, 4, 4) and torch.equal(draw[1], draw[2])  # seeded
    assert not torch.allclose(draw[0], draw[1])  # guidance moves the samples
    uncond = sample_teacher(net, TextCond(null.states.expand(2, -1, -1), null.mask.expand(2, -1)), null, steps=4,
                            guidance=5.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(draw[0], uncond, atol=1e-5)  # guidance 0 is the null prompt's model alone
    abar = alphas_cumprod()
    assert abar.shape == (1000,) and abs(float(((1 - abar[-1]) / abar[-1]).sqrt()) - 157.4073) < 1e-3
