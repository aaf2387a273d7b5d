"""Prompts to text conditioning through a frozen T5 encoder, as PixArt-alpha and SIM's inference code do it: the
T5 tokenizer, padding to 120 tokens, truncation, the attention mask kept for the DiT's cross-attention, no caption
cleaning. Prompts longer than the limit are truncated with a warning and counted."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from sim_core.errors import ConfigError
from sim_core.testbeds.t2i.cond import TextCond

MAX_TOKENS = 120  # PixArt-alpha / SIM: T5 max_length 120 (diffusers' PixArtAlphaPipeline max_sequence_length)


class TextEncoder:
    """``encoder`` is a transformers ``T5EncoderModel`` (frozen, eval mode); ``tokenizer`` its tokenizer."""

    def __init__(self, tokenizer, encoder, max_length: int = MAX_TOKENS):
        vocab = getattr(getattr(encoder, "config", None), "vocab_size", None)
        if vocab is not None and len(tokenizer) > vocab:
            raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the text encoder embeds only {vocab}: "
                              "they do not belong together")
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.max_length = int(max_length)
        self.truncated = 0  # prompts cut to max_length so far

    @classmethod
    def from_folders(cls, tokenizer_dir, encoder_dir, dtype=torch.float32, device="cpu",
                     max_length: int = MAX_TOKENS) -> "TextEncoder":
        """Local folders only (``save_pretrained`` layout); never a download."""
        from transformers import AutoTokenizer, T5EncoderModel
        for what, d in (("T5 tokenizer", tokenizer_dir), ("T5 encoder", encoder_dir)):
            if not Path(d).is_dir():
                raise ConfigError(f"{what} folder {d} does not exist")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
            encoder = T5EncoderModel.from_pretrained(str(encoder_dir), local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load T5 from {encoder_dir}: {str(e).splitlines()[0][:200]}") from None
        return cls(tokenizer, encoder.to(device), max_length)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> TextCond:
        if not prompts:
            raise ConfigError("no prompt to encode")
        lengths = [len(ids) for ids in self.tokenizer(list(prompts), truncation=False)["input_ids"]]
        cut = sum(n > self.max_length for n in lengths)
        if cut:
            self.truncated += cut
            warnings.warn(f"{cut} of {len(prompts)} prompts are longer than {self.max_length} tokens and were "
                          f"truncated (longest: {max(lengths)} tokens)", stacklevel=2)
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        device = next(self.encoder.parameters()).device
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return TextCond(states, mask)
