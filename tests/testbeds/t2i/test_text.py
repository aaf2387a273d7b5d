"""Prompts through a tiny T5 in transformers' real classes, saved and loaded from local folders: 120 padded tokens
with PixArt's mask, truncation warned and counted, a tokenizer that does not fit its encoder refused."""
from __future__ import annotations

import pytest
import torch

from sim_core.errors import ConfigError
from sim_core.testbeds.t2i.text import MAX_TOKENS, TextEncoder

WORDS = "a an the handwritten digit number written by hand seven three eight zero".split()


def tiny_t5(words=WORDS, seed=0):
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    tok = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
                      + [("\u2581" + w, -3.0) for w in words], extra_ids=0)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
                   dropout_rate=0.0, is_encoder_decoder=False)
    return tok, T5EncoderModel(cfg).eval()


def test_prompts_become_120_padded_tokens_with_their_mask(tmp_path):
    tok, enc = tiny_t5()
    tok.save_pretrained(tmp_path / "tokenizer")
    enc.save_pretrained(tmp_path / "text_encoder")
    te = TextEncoder.from_folders(tmp_path / "tokenizer", tmp_path / "text_encoder")
    prompts = ["a handwritten digit seven", "the number three", "eight"]
    cond = te(prompts)
    assert cond.states.shape == (3, MAX_TOKENS, 32) and cond.mask.shape == (3, MAX_TOKENS)
    assert cond.mask.sum(dim=1).tolist() == [5, 4, 2]  # the words and </s>
    assert cond.mask[:, :2].all() and not cond.mask[:, 5:].any()
    same = TextEncoder(tok, enc)(prompts)  # the folders hold exactly the in-memory models
    assert torch.equal(same.states, cond.states) and torch.equal(same.mask, cond.mask)
    assert te.truncated == 0 and all(not p.requires_grad for p in te.encoder.parameters())


def test_long_prompts_are_truncated_with_a_warning_and_counted():
    tok, enc = tiny_t5()
    te = TextEncoder(tok, enc, max_length=6)
    with pytest.warns(UserWarning, match=r"1 of 2 prompts are longer than 6 tokens and were truncated \(longest: 9"):
        cond = te(["seven", "a handwritten digit written by hand zero eight"])
    assert cond.mask.sum(dim=1).tolist() == [2, 6] and te.truncated == 1
    with pytest.warns(UserWarning):
        te(["the number written by hand a seven"] * 3)
    assert te.truncated == 4


def test_a_tokenizer_that_does_not_fit_the_encoder_is_refused(tmp_path):
    tok_big, _ = tiny_t5(words=WORDS + ["nine", "four", "five"])
    _, enc = tiny_t5()
    with pytest.raises(ConfigError, match="the tokenizer has 20 tokens but the text encoder embeds only 17"):
        TextEncoder(tok_big, enc)
    with pytest.raises(ConfigError, match="T5 tokenizer folder .*nowhere does not exist"):
        TextEncoder.from_folders(tmp_path / "nowhere", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    tok_big.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError, match="cannot load T5 from .*empty"):
        TextEncoder.from_folders(tmp_path / "tok", tmp_path / "empty")
    with pytest.raises(ConfigError, match="no prompt to encode"):
        TextEncoder(*tiny_t5())([])
