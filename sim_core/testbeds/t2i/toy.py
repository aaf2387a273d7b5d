"""The toy text-to-image testbed's pieces that fit a laptop: prompts for scikit-learn's digits from templates (some
held out from the teacher's training for evaluation), a tiny frozen T5 whose tokenizer is built from the templates'
words, and the digits as PixArt-style latents (pixel_unshuffle: 1 x 8 x 8 -> 4 x 4 x 4, exact)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sim_core.files import atomic_directory, atomic_write_json

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = ("a handwritten {name}", "the digit {name}", "a drawing of the number {name}",
                   "{name} written by hand")
HELDOUT_TEMPLATES = ("an image of the numeral {name}", "a {name} in ink")  # never seen in the teacher's training
NULL_PROMPT = ""  # the unconditional caption (diffusers' PixArt CFG encodes "" too)


def prompt(label: int, template: str) -> str:
    return template.format(name=DIGIT_NAMES[label])


def all_prompts(templates=TRAIN_TEMPLATES) -> list[tuple[int, str]]:
    """(digit, prompt) for every digit and template, digit-major."""
    return [(d, prompt(d, t)) for d in range(10) for t in templates]


def vocabulary() -> list[str]:
    words = {w for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES for w in t.replace("{name}", "").split()}
    return sorted(words | set(DIGIT_NAMES))


def build_toy_t5(out_dir, seed: int = 0, d_model: int = 32) -> dict:
    """A tiny random T5 encoder and its tokenizer (no sentencepiece model: the vocabulary is the templates' words),
    written as ``tokenizer/`` and ``text_encoder/`` in transformers' save_pretrained layout. Frozen and random:
    distinct prompts still get distinct states."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    out = Path(out_dir)
    tok = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
                      + [("\u2581" + w, -3.0) for w in vocabulary()], extra_ids=0)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=32,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False)
    enc = T5EncoderModel(cfg).eval()
    meta = {"kind": "toy_t5", "seed": seed, "d_model": d_model, "vocab": len(tok),
            "parameters": sum(p.numel() for p in enc.parameters())}
    with atomic_directory(out) as tmp:
        tok.save_pretrained(tmp / "tokenizer")
        enc.save_pretrained(tmp / "text_encoder")
        atomic_write_json(tmp / "toy_t5.json", meta)
    return meta


def read_toy_t5_meta(folder) -> dict:
    return json.loads((Path(folder) / "toy_t5.json").read_text())


def digit_latents(split: str = "train", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits testbed's split (the same [-1, 1] images: pixel / 8 - 1) as (N, 4, 4, 4) latents, and labels."""
    import torch.nn.functional as F

    from sim_core.testbeds.digits.data import load_digits_split
    x, y = load_digits_split(split)
    return F.pixel_unshuffle(x.to(dtype), 2), y
