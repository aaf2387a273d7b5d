"""Toy stand-ins for Table 3's three image scorers, trained here on scikit-learn's 8x8 digits in the same
transformers classes and file layouts as the real downloads and loaded by the same loaders (``scorers.py``); only
the config files differ. They are toy stand-ins, NOT the published metrics: their numbers say whether a toy
generator draws clean digits that match their prompts, nothing about LAION aesthetics, PickScore or ImageReward.

- toy aesthetic stand-in: a tiny CLIP vision tower and an :class:`AestheticHead` regressing an image-quality target
  on a 1-10 scale (real digits 9, degraded ones ``9 - 8 * amount``: blur, additive noise, a blend with another
  digit, an erased band, a blend towards a constant).
- toy PickScore stand-in: a tiny CLIPModel trained with CLIP's contrastive loss (learned logit_scale) on digit
  images and prompts from ``TRAIN_TEMPLATES``; judged on the test split with ``HELDOUT_TEMPLATES``.
- toy ImageReward stand-in: BLIP's ViT, BLIP's text encoder cross-attending to it and the reward head, trained
  with ImageReward's pairwise loss ``-log sigmoid(r_preferred - r_other)`` (for a prompt, its clean digit over a
  different digit or a degraded one), saved in ImageReward.pt's key layout and z-normalised by the mean and std of
  its rewards on the training pairs.

Folder (``build_toy_scorers``)::

    aesthetic/clip/            CLIPVisionModelWithProjection + CLIPImageProcessorPil (openai/clip-vit-large-patch14)
    aesthetic/head.pth         AestheticHead state dict (sac+logos+ava1-l14-linearMSE.pth)
    pickscore/model/           CLIPModel (yuvalkirstain/PickScore_v1)
    pickscore/processor/       CLIPImageProcessorPil + CLIPTokenizer (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)
    imagereward/ImageReward.pt           ImageReward's key layout (THUDM/ImageReward)
    imagereward/med_config.json          the text encoder's BERT config, as ImageReward ships it
    imagereward/vision_config.json       the toy's BlipVisionConfig (ImageReward's ViT-L/16 is fixed in its code)
    imagereward/reward_normalisation.json  the toy's z-normalisation (ImageReward's constants are in its code)
    imagereward/tokenizer/     BertTokenizer (bert-base-uncased; the loader adds [DEC] and [ENC] as BLIP does)
    toy_scorers.json           what was trained and measured
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from sim_core.files import atomic_directory, atomic_write_json
from sim_core.testbeds.t2i.latents import PixelUnshuffleVAE, decode_to_uint8
from sim_core.testbeds.t2i.scorers import (IMAGEREWARD_MAX_TOKENS, IMAGEREWARD_NORMALISATION, IMAGEREWARD_TEXT_CONFIG,
                                           IMAGEREWARD_VISION_CONFIG, AestheticHead, AestheticScorer,
                                           ImageRewardScorer, PickScorer, _features, _pixels, load_imagereward)
from sim_core.testbeds.t2i.toy import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, prompt, vocabulary

META_FILE = "toy_scorers.json"
IMAGE_SIZE, PATCH = 16, 4  # the processors upsample 8x8 to 16x16 (bicubic); 4x4 patches: 16 image tokens
DEGRADATIONS = ("blur", "noise", "blend", "erase", "constant")
CLEAN_QUALITY, WORST_QUALITY = 9.0, 1.0
EVAL_AMOUNTS = (0.25, 0.5, 0.75, 1.0)
BLUR_SIGMA, NOISE_STD = 1.5, 1.0  # at amount 1: a digit smeared over its 8x8 frame; noise of half the range

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=IMAGE_SIZE, patch_size=PATCH)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
BLIP_TEXT = dict(TEXT, num_hidden_layers=1)  # self-attention finds the digit's name, cross-attention its image

AESTHETIC = dict(steps=250, batch=96, lr=3e-3, projection_dim=16)
PICKSCORE = dict(steps=250, groups=6, lr=3e-3, projection_dim=32)
IMAGEREWARD = dict(steps=150, groups=3, lr=3e-3, degraded_amounts=(0.25, 1.0))


def toy_uint8(x: torch.Tensor) -> torch.Tensor:
    """Digits in [-1, 1] (B, 1, 8, 8) as the harness saves images: uint8 (B, 3, 8, 8) by ``decode_to_uint8``
    (truncation, grey repeated to RGB), through the toy testbed's exact pixel-unshuffle VAE."""
    vae = PixelUnshuffleVAE()
    return decode_to_uint8(vae, F.pixel_unshuffle(x.float(), vae.factor))


def quality_target(amount) -> torch.Tensor:
    """The toy aesthetic stand-in's target on the 1-10 scale: clean digits 9, falling linearly to 1 at amount 1."""
    return CLEAN_QUALITY - (CLEAN_QUALITY - WORST_QUALITY) * torch.as_tensor(amount, dtype=torch.float32)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))


def degrade(x: torch.Tensor, kind: str, amount, generator: torch.Generator,
            partner: torch.Tensor | None = None) -> torch.Tensor:
    """A degraded copy of digits ``x`` (B, 1, H, W) in [-1, 1]; ``amount`` in [0, 1] (a float or (B,)) is how far
    towards the worst: a blur of sigma 1.5, Gaussian noise of std 1, a 50/50 blend with ``partner`` (other digits),
    a band of rows or columns erased to the background, a blend towards a random constant grey."""
    b, _, h, w = x.shape
    a = torch.as_tensor(amount, dtype=x.dtype).reshape(-1).expand(b).reshape(b, 1, 1, 1)
    if kind == "blur":
        y = x + a * (_gaussian_blur(x, BLUR_SIGMA) - x)
    elif kind == "noise":
        y = x + a * NOISE_STD * torch.randn(x.shape, generator=generator)
    elif kind == "blend":
        if partner is None or partner.shape != x.shape:
            raise ValueError("the blend degradation needs partner digits of the same shape")
        y = x + a / 2 * (partner - x)
    elif kind == "erase":
        width = (a.reshape(b) * h).round()
        start = (torch.rand(b, generator=generator) * (h - width + 1)).floor()
        idx = torch.arange(h, dtype=x.dtype)
        band = (idx >= start[:, None]) & (idx < (start + width)[:, None])  # (B, H)
        rows = torch.rand(b, generator=generator) < 0.5  # a band of rows or of columns
        mask = torch.where(rows[:, None, None], band[:, :, None].expand(b, h, w), band[:, None, :].expand(b, h, w))
        y = torch.where(mask[:, None], torch.full_like(x, -1.0), x)
    elif kind == "constant":
        c = torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1
        y = x + a * (c - x)
    else:
        raise ValueError(f"unknown degradation {kind!r}; valid: {', '.join(DEGRADATIONS)}")
    return y.clamp(-1, 1)


def other_digits(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each image an index of a random image with a different label (the blend partner, the mismatched digit)."""
    shifted = (labels + torch.randint(1, 10, labels.shape, generator=generator)) % 10
    out = torch.empty_like(labels)
    for d in range(10):
        pool = torch.nonzero(labels == d).squeeze(1)
        want = shifted == d
        out[want] = pool[torch.randint(0, len(pool), (int(want.sum()),), generator=generator)]
    return out


def random_degradations(x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, low: float = 0.0,
                        high: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Each digit degraded by a random kind at a random amount in [low, high]: (images, amounts, kinds)."""
    n = x.shape[0]
    kinds = torch.randint(0, len(DEGRADATIONS), (n,), generator=generator)
    amounts = low + (high - low) * torch.rand(n, generator=generator)
    partners = x[other_digits(labels, generator)]
    out = x.clone()
    for k, kind in enumerate(DEGRADATIONS):
        sel = kinds == k
        if sel.any():
            out[sel] = degrade(x[sel], kind, amounts[sel], generator, partners[sel])
    return out, amounts, [DEGRADATIONS[k] for k in kinds.tolist()]


def toy_processor():
    """CLIP's PIL preprocessing at the toy size (bicubic resize of the short side, centre crop, CLIP mean/std)."""
    from transformers import CLIPImageProcessorPil
    return CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE,
                                                                                "width": IMAGE_SIZE})


def toy_clip_tokenizer():
    """A CLIPTokenizer whose BPE vocabulary is the letters plus every template word as one token (each word's
    merges chained left to right; a word another word's merges split is joined by merges of its pieces)."""
    from transformers import CLIPTokenizer
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c + suffix] = len(vocab)
    merges: list[tuple[str, str]] = []

    def chain(parts):
        while len(parts) > 1:
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1]] + parts[2:]

    words = vocabulary()
    for w in words:
        chain(list(w[:-1]) + [w[-1] + "</w>"])
    for _ in range(len(words)):  # merges appended last never split a word that is already one token
        tok = CLIPTokenizer(vocab=dict(vocab), merges=list(merges))
        split = [(w, tok.tokenize(w)) for w in words if len(tok.tokenize(w)) > 1]
        if not split:
            return tok
        for _, pieces in split:
            chain(pieces)
    raise RuntimeError("the toy CLIP vocabulary does not converge to one token per word")


def toy_bert_tokenizer():
    """bert-base-uncased's role for the toy: a WordPiece vocabulary of BERT's specials and the template words."""
    from transformers import BertTokenizer
    return BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                           + vocabulary())})


@contextmanager
def _one_thread():
    # tiny networks are fastest on one thread, and one thread makes the build's floats independent of the machine;
    # the caller's global RNG is left as it was (the trainers seed it)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(before)


def _curve(losses: list[float], every: int = 25) -> list[float]:
    return [round(sum(losses[i:i + every]) / len(losses[i:i + every]), 5) for i in range(0, len(losses), every)]


def _pixel_values(processor, images: torch.Tensor) -> torch.Tensor:
    return _pixels(processor, images, "cpu")


# ---- toy aesthetic stand-in ------------------------------------------------------------------------------------

def aesthetic_degraded_set(x: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training digits twice degraded (random kinds and amounts): uint8 images and quality targets; with the
    clean digits (target 9) the aesthetic stand-in's training set."""
    g = torch.Generator().manual_seed(seed)
    parts, amounts = zip(*(random_degradations(x, labels, g)[:2] for _ in range(2)))
    return toy_uint8(torch.cat(parts)), quality_target(torch.cat(amounts))


def train_toy_aesthetic(x, labels, seed: int, processor, clean: torch.Tensor):
    """linearMSE's regression of the quality target; ``clean`` the processor's pixels of the clean digits."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    cfg = AESTHETIC
    images, target = aesthetic_degraded_set(x, labels, seed)
    pixels = torch.cat([clean, _pixel_values(processor, images)])
    target = torch.cat([quality_target(torch.zeros(len(clean))), target])
    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=cfg["projection_dim"]))
    head = AestheticHead(cfg["projection_dim"])
    with torch.no_grad():  # start at the mean target: the steps go to the ranking, not to the offset
        head.layers[7].bias.fill_(float(target.mean()))
    params = [*vision.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=1e-4, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    vision.train()
    losses = []
    for _ in range(cfg["steps"]):
        idx = torch.randint(0, len(pixels), (cfg["batch"],), generator=g)
        e = vision(pixel_values=pixels[idx]).image_embeds
        w, b = head.affine()  # the head as it scores (eval mode, no dropout), at a fraction of the cost
        loss = F.mse_loss(e / e.norm(dim=-1, keepdim=True) @ w + b, target[idx])  # linearMSE's objective
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return vision.eval(), head.eval(), {"examples": len(pixels), "curve_mse": _curve(losses)}


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def evaluate_toy_aesthetic(scorer: AestheticScorer, x, labels, seed: int) -> dict:
    """Held-out quality of the toy aesthetic stand-in: test digits clean and degraded by every kind at
    ``EVAL_AMOUNTS``; the rank correlation with the target, and how often the clean digit scores above each of its
    degraded versions."""
    g = torch.Generator().manual_seed(seed + 100)
    partners = x[other_digits(labels, g)]
    clean = scorer(toy_uint8(x))
    scores, targets = [clean], [quality_target(torch.zeros(len(x)))]
    by_kind, above = {}, {}
    for kind in DEGRADATIONS:
        by_kind[kind] = {}
        for a in EVAL_AMOUNTS:
            s = scorer(toy_uint8(degrade(x, kind, a, g, partners)))
            scores.append(s)
            targets.append(quality_target(torch.full((len(x),), a)))
            by_kind[kind][str(a)] = round(float(s.mean()), 4)
            above.setdefault(str(a), []).append(clean > s)
    s, t = torch.cat(scores), torch.cat(targets)
    return {"images": len(x), "spearman": round(_spearman(s, t), 4),
            "pearson": round(float(torch.corrcoef(torch.stack([s, t]))[0, 1]), 4),
            "mean_clean": round(float(clean.mean()), 4), "mean_by_kind_and_amount": by_kind,
            "clean_above_degraded_by_amount": {a: round(float(torch.cat(v).float().mean()), 4)
                                               for a, v in above.items()}}


# ---- toy PickScore stand-in ------------------------------------------------------------------------------------

def train_toy_pickscore(labels, seed: int, clean: torch.Tensor, tokenizer):
    """CLIP's symmetric contrastive loss over groups of ten (image, prompt) pairs, one per digit, so that no
    negative in a group shares the positive's digit; prompts from TRAIN_TEMPLATES; ``clean`` the processor's
    pixels of the training digits."""
    from transformers import CLIPConfig, CLIPModel
    cfg = PICKSCORE
    prompts = [prompt(d, t) for d in range(10) for t in TRAIN_TEMPLATES]  # digit-major
    tok = tokenizer(prompts, padding=True, return_tensors="pt")
    text = dict(TEXT, vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=cfg["projection_dim"]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    by_digit = [torch.nonzero(labels == d).squeeze(1) for d in range(10)]
    n_t, groups, arange = len(TRAIN_TEMPLATES), cfg["groups"], torch.arange(10)
    model.train()
    losses = []
    for _ in range(cfg["steps"]):
        idx = torch.stack([p[torch.randint(0, len(p), (groups,), generator=g)] for p in by_digit], 1)  # (G, 10)
        which = arange * n_t + torch.randint(0, n_t, (groups, 10), generator=g)  # a template per pair
        e_img = _features(model.get_image_features(pixel_values=clean[idx.reshape(-1)]))
        e_txt = _features(model.get_text_features(**tok))  # the 40 prompts once, then indexed
        e_img = F.normalize(e_img, dim=-1).reshape(groups, 10, -1)
        e_txt = F.normalize(e_txt, dim=-1)[which]
        logits = model.logit_scale.exp() * torch.einsum("gid,gjd->gij", e_img, e_txt)
        target = arange.expand(groups, 10)
        loss = (F.cross_entropy(logits.flatten(0, 1), target.reshape(-1))
                + F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), target.reshape(-1))) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        losses.append(loss.item())
    return model.eval(), {"pairs_per_step": groups * 10, "curve_clip_loss": _curve(losses),
                          "logit_scale_exp": round(float(model.logit_scale.detach().exp()), 4)}


@torch.no_grad()
def pickscore_retrieval(scorer: PickScorer, x, labels, templates=HELDOUT_TEMPLATES + TRAIN_TEMPLATES) -> dict:
    """Per template, the fraction of images whose cosine is highest with their own digit's prompt among the ten
    digits' prompts in that template (the scorer's own image and text embeddings, all prompts at once), and
    ``heldout``: the mean over HELDOUT_TEMPLATES."""
    model, proc = scorer.model, scorer.processor
    e_img = F.normalize(_features(model.get_image_features(pixel_values=_pixel_values(proc.image_processor,
                                                                                      toy_uint8(x)))), dim=-1)
    hits = {}
    for t in templates:
        tok = proc.tokenizer([prompt(d, t) for d in range(10)], padding=True, return_tensors="pt")
        e_txt = F.normalize(_features(model.get_text_features(**tok)), dim=-1)
        hits[t] = (e_img @ e_txt.T).argmax(1) == labels
    out = {t: round(float(h.float().mean()), 4) for t, h in hits.items()}
    held = [hits[t] for t in HELDOUT_TEMPLATES if t in hits]
    if held:
        out["heldout"] = round(float(torch.cat(held).float().mean()), 4)
    return out


# ---- toy ImageReward stand-in ----------------------------------------------------------------------------------

def imagereward_degraded(x, labels, seed: int) -> torch.Tensor:
    """Each training digit's degraded copy (a random kind at an amount in ``IMAGEREWARD['degraded_amounts']``),
    drawn once: the copies its prompts prefer it over."""
    g = torch.Generator().manual_seed(seed + 200)
    return random_degradations(x, labels, g, *IMAGEREWARD["degraded_amounts"])[0]


def _pair_plan(labels, seed: int) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(seed + 201)
    mismatched = other_digits(labels, g)
    templates = torch.randint(0, len(TRAIN_TEMPLATES), (2 * len(labels),), generator=g).tolist()
    return mismatched, [prompt(int(d), TRAIN_TEMPLATES[t]) for d, t in zip(labels.repeat(2).tolist(), templates)]


def imagereward_training_pairs(x, labels, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Pairs as training draws them, two per training digit: a prompt of its digit (a random TRAIN_TEMPLATE) with
    the digit preferred over a digit of another class, and over its degraded copy. Returns uint8 (preferred,
    other) and the prompts; the z-normalisation is measured on the rewards of both sides."""
    mismatched, prompts = _pair_plan(labels, seed)
    other = torch.cat([x[mismatched], imagereward_degraded(x, labels, seed)])
    return toy_uint8(torch.cat([x, x])), toy_uint8(other), prompts


def _toy_blip(tokenizer, seed: int):
    from transformers import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel
    # weights of std 1/sqrt(width): BERT's 0.02 is for 768-wide layers (at 32 a fresh text encoder's [CLS] state
    # hardly depends on the prompt), BLIP's vision 1e-10 would start every image token alike
    init = BLIP_TEXT["hidden_size"] ** -0.5
    vc = BlipVisionConfig(**VISION, layer_norm_eps=1e-6, initializer_range=init)
    tc = BlipTextConfig(**BLIP_TEXT, vocab_size=len(tokenizer), encoder_hidden_size=vc.hidden_size,
                        max_position_embeddings=40, initializer_range=init, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id)
    torch.manual_seed(seed)
    text = BlipTextModel(tc, add_pooling_layer=False)
    with torch.no_grad():  # positions start small: a digit's name then reads alike wherever a template puts it
        # (in trials, own prompt over another digit's on the held-out "a {name} in ink": about 0.6 -> 0.85)
        text.embeddings.position_embeddings.weight.mul_(0.1)
    return BlipVisionModel(vc), text, AestheticHead(tc.hidden_size), vc, tc


def _rewards(vision, text, head, pixels, tok) -> torch.Tensor:
    states = vision(pixel_values=pixels).last_hidden_state
    out = text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], encoder_hidden_states=states,
               encoder_attention_mask=torch.ones(states.shape[:2], dtype=torch.long))
    return head(out.last_hidden_state[:, 0])


def train_toy_imagereward(labels, seed: int, clean: torch.Tensor, degraded: torch.Tensor, tokenizer):
    """ImageReward's ranking loss on groups of ten training digits, one per class: each digit's prompt (a random
    TRAIN_TEMPLATE) prefers its digit over the nine others and over its degraded copy, all ten pairs per prompt at
    once as ImageReward ranks every pair of a prompt's images; the image tokens are computed once per group.
    ``clean`` and ``degraded`` are the processor's pixels of the training digits and their degraded copies."""
    cfg = IMAGEREWARD
    prompts = [prompt(d, t) for d in range(10) for t in TRAIN_TEMPLATES]  # digit-major
    # shorter padding than the scorer's 35 tokens: masked padding after the prompt leaves the [CLS] state as it is
    tok = tokenizer(prompts, padding=True, return_tensors="pt")
    vision, text, head, vc, tc = _toy_blip(tokenizer, seed)
    params = [*vision.parameters(), *text.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=1e-4, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    by_digit = [torch.nonzero(labels == d).squeeze(1) for d in range(10)]
    n_t, groups, digits = len(TRAIN_TEMPLATES), cfg["groups"], torch.arange(10)
    off_diagonal = ~torch.eye(10, dtype=torch.bool)
    vision.train(), text.train()
    losses = []
    for _ in range(cfg["steps"]):
        idx = torch.stack([p[torch.randint(0, len(p), (groups,), generator=g)] for p in by_digit], 1).reshape(-1)
        which = (digits * n_t).repeat(groups) + torch.randint(0, n_t, (groups * 10,), generator=g)
        states = vision(pixel_values=torch.cat([clean[idx], degraded[idx]])).last_hidden_state
        t, d = states.shape[1:]
        own = states[:groups * 10].reshape(groups, 1, 10, t, d).expand(groups, 10, 10, t, d)
        worse = states[groups * 10:].reshape(groups, 10, 1, t, d)
        images = torch.cat([own, worse], 2).reshape(-1, t, d)  # (group, prompt, 10 digits + its degraded copy)
        ids, mask = (tok[k][which].reshape(groups, 10, 1, -1).expand(groups, 10, 11, -1).reshape(len(images), -1)
                     for k in ("input_ids", "attention_mask"))
        out = text(input_ids=ids, attention_mask=mask, encoder_hidden_states=images,
                   encoder_attention_mask=torch.ones(images.shape[:2], dtype=torch.long))
        w, b = head.affine()  # the head as it scores (eval mode, no dropout), at a fraction of the cost
        r = (out.last_hidden_state[:, 0] @ w + b).reshape(groups, 10, 11)
        preferred = r[:, digits, digits]
        other = torch.cat([r[:, :, :10][:, off_diagonal].reshape(groups, 10, 9), r[:, :, 10:]], 2)
        loss = -F.logsigmoid(preferred[..., None] - other).mean()  # ImageReward's ranking loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    for m in (vision, text, head):
        m.eval()
    return vision, text, head, vc, tc, {"pairs_per_step": groups * 100, "curve_ranking_loss": _curve(losses)}


# names in ImageReward.pt: BLIP's vit.py in timm's layout (the inverse of scorers.VIT_RENAMES)
_TIMM_NAMES = [
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.{p}", "patch_embed.proj.{p}"),
    ("encoder.layers.{n}.layer_norm1.{p}", "blocks.{n}.norm1.{p}"),
    ("encoder.layers.{n}.layer_norm2.{p}", "blocks.{n}.norm2.{p}"),
    ("encoder.layers.{n}.self_attn.qkv.{p}", "blocks.{n}.attn.qkv.{p}"),
    ("encoder.layers.{n}.self_attn.projection.{p}", "blocks.{n}.attn.proj.{p}"),
    ("encoder.layers.{n}.mlp.fc1.{p}", "blocks.{n}.mlp.fc1.{p}"),
    ("encoder.layers.{n}.mlp.fc2.{p}", "blocks.{n}.mlp.fc2.{p}"),
    ("post_layernorm.{p}", "norm.{p}"),
]


def imagereward_state_dict(vision, text, head, seed: int) -> dict:
    """The three networks under ImageReward.pt's names, with what the real file also holds and the reward does not
    read: BLIP's contrastive projections (random here) and the text encoder's position_ids buffer."""
    sd, mapped = {}, set()
    v = vision.state_dict()
    for hf, timm in _TIMM_NAMES:
        for n in range(len(vision.encoder.layers)) if "{n}" in hf else [None]:
            for p in ("weight", "bias") if "{p}" in hf else [None]:
                sd["blip.visual_encoder." + timm.format(n=n, p=p)] = v[hf.format(n=n, p=p)]
                mapped.add(hf.format(n=n, p=p))
    if len(sd) != len(v):
        raise RuntimeError(f"BLIP ViT names not all mapped: {sorted(set(v) - mapped)[:4]}")
    sd.update({f"blip.text_encoder.{k}": t for k, t in text.state_dict().items()})
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(text.config.max_position_embeddings)[None]
    sd.update({f"mlp.{k}": t for k, t in head.state_dict().items()})
    g = torch.Generator().manual_seed(seed + 300)
    for name, width in (("vision_proj", vision.config.hidden_size), ("text_proj", text.config.hidden_size)):
        sd[f"blip.{name}.weight"] = torch.randn(16, width, generator=g) * 0.02
        sd[f"blip.{name}.bias"] = torch.zeros(16)
    return {k: t.detach().clone().contiguous() for k, t in sd.items()}


def med_config(tc, encoder_width: int) -> dict:
    """The text encoder's config in BERT's format, the keys of the med_config.json ImageReward ships."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": tc.hidden_act,
            "hidden_dropout_prob": 0.1, "hidden_size": tc.hidden_size, "initializer_range": tc.initializer_range,
            "intermediate_size": tc.intermediate_size, "layer_norm_eps": tc.layer_norm_eps,
            "max_position_embeddings": tc.max_position_embeddings, "model_type": "bert",
            "num_attention_heads": tc.num_attention_heads, "num_hidden_layers": tc.num_hidden_layers,
            "pad_token_id": tc.pad_token_id, "type_vocab_size": 2, "vocab_size": tc.vocab_size,
            "encoder_width": encoder_width, "add_cross_attention": True}


@torch.no_grad()
def imagereward_preference(scorer: ImageRewardScorer, x, labels, seed: int, templates=HELDOUT_TEMPLATES) -> dict:
    """Held-out preferences of an ImageReward scorer on digits, per template: the image's own digit's prompt over
    another digit's prompt (same image, same template; prompts the ranking loss never compared), the clean digit
    over a degraded copy and over a digit of another class (same prompt, as the loss compares)."""
    g = torch.Generator().manual_seed(seed + 400)
    n = len(x)
    images = toy_uint8(x)
    degraded = toy_uint8(random_degradations(x, labels, g, *IMAGEREWARD["degraded_amounts"])[0])
    others = toy_uint8(x[other_digits(labels, g)])
    out = {"images": n}
    rates = {"own_prompt_over_other_prompt": [], "clean_over_degraded": [], "own_digit_over_other_digit": []}
    for t in templates:
        wrong = (labels + torch.randint(1, 10, (n,), generator=g)) % 10
        mine = [prompt(int(d), t) for d in labels]
        own = scorer(images, mine)
        per = {"own_prompt_over_other_prompt": own > scorer(images, [prompt(int(d), t) for d in wrong]),
               "clean_over_degraded": own > scorer(degraded, mine),
               "own_digit_over_other_digit": own > scorer(others, mine)}
        for k, v in per.items():
            rates[k].append(v)
        out[t] = {k: round(float(v.float().mean()), 4) for k, v in per.items()}
    out.update({k: round(float(torch.cat(v).float().mean()), 4) for k, v in rates.items()})
    return out


# ---- the folder --------------------------------------------------------------------------------------------------

def toy_scorer_paths(folder) -> dict:
    """The arguments of the three real loaders for a folder ``build_toy_scorers`` wrote."""
    f = Path(folder)
    return {"aesthetic": (f / "aesthetic" / "clip", f / "aesthetic" / "head.pth"),
            "pickscore": (f / "pickscore" / "model", f / "pickscore" / "processor"),
            "imagereward": (f / "imagereward" / "ImageReward.pt", f / "imagereward" / "tokenizer")}


def load_toy_scorers(folder, device="cpu") -> dict:
    """The three stand-ins through the real loaders: AestheticScorer.from_files, PickScorer.from_folders,
    load_imagereward."""
    p = toy_scorer_paths(folder)
    return {"aesthetic": AestheticScorer.from_files(*p["aesthetic"], device=device),
            "pickscore": PickScorer.from_folders(*p["pickscore"], device=device),
            "imagereward": load_imagereward(*p["imagereward"], device=device)}


def read_toy_scorers_meta(folder) -> dict:
    return json.loads((Path(folder) / META_FILE).read_text())


def build_toy_scorers(out_dir, seed: int = 0) -> dict:
    """Train the three toy stand-ins on the digits' training split, write them into ``out_dir`` in the real
    downloads' layouts (atomically: the whole folder or none), reload them through the real loaders and measure
    them on the test split. Deterministic for a seed (one CPU thread). Returns the metadata in ``toy_scorers.json``."""
    from sim_core.testbeds.digits.data import load_digits_split
    out = Path(out_dir)
    with _one_thread(), atomic_directory(out) as tmp:
        t_all, cpu_all = time.perf_counter(), time.process_time()
        x, y = load_digits_split("train")
        x_test, y_test = load_digits_split("test")
        processor = toy_processor()
        clean = _pixel_values(processor, toy_uint8(x))  # the training digits as every stand-in sees them
        meta = {"kind": "toy_scorers", "seed": seed,
                "note": "toy stand-ins trained on 8x8 digits in the real scorers' classes and layouts; "
                        "not the published aesthetic score, PickScore or ImageReward",
                "image_size": IMAGE_SIZE, "patch_size": PATCH, "train_images": len(x), "test_images": len(x_test)}

        t = time.perf_counter()
        vision, head, log = train_toy_aesthetic(x, y, seed, processor, clean)
        (tmp / "aesthetic").mkdir()
        vision.save_pretrained(tmp / "aesthetic" / "clip")
        processor.save_pretrained(tmp / "aesthetic" / "clip")
        torch.save(head.state_dict(), tmp / "aesthetic" / "head.pth")
        meta["aesthetic"] = {"name": "toy aesthetic stand-in", **log, **AESTHETIC, "vision": VISION,
                             "target": f"{CLEAN_QUALITY:g} clean, {CLEAN_QUALITY:g} - "
                                       f"{CLEAN_QUALITY - WORST_QUALITY:g} * amount degraded",
                             "degradations": list(DEGRADATIONS),
                             "parameters": sum(p.numel() for m in (vision, head) for p in m.parameters()),
                             "train_seconds": round(time.perf_counter() - t, 2)}

        t = time.perf_counter()
        clip_tok = toy_clip_tokenizer()
        model, log = train_toy_pickscore(y, seed, clean, clip_tok)
        model.save_pretrained(tmp / "pickscore" / "model")
        processor.save_pretrained(tmp / "pickscore" / "processor")
        clip_tok.save_pretrained(tmp / "pickscore" / "processor")
        meta["pickscore"] = {"name": "toy PickScore stand-in", **log, **PICKSCORE, "vision": VISION, "text": TEXT,
                             "vocab": len(clip_tok), "templates": list(TRAIN_TEMPLATES),
                             "parameters": sum(p.numel() for p in model.parameters()),
                             "train_seconds": round(time.perf_counter() - t, 2)}

        t = time.perf_counter()
        bert_tok = toy_bert_tokenizer()
        bert_tok.save_pretrained(tmp / "imagereward" / "tokenizer")  # as bert-base-uncased: without [DEC], [ENC]
        blip_tok = toy_bert_tokenizer()
        blip_tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})  # BLIP's
        degraded = _pixel_values(processor, toy_uint8(imagereward_degraded(x, y, seed)))
        ir_vision, ir_text, ir_head, vc, tc, log = train_toy_imagereward(y, seed, clean, degraded, blip_tok)
        torch.save(imagereward_state_dict(ir_vision, ir_text, ir_head, seed), tmp / "imagereward" / "ImageReward.pt")
        atomic_write_json(tmp / "imagereward" / IMAGEREWARD_TEXT_CONFIG, med_config(tc, vc.hidden_size))
        vc.to_json_file(tmp / "imagereward" / IMAGEREWARD_VISION_CONFIG)
        with torch.no_grad():  # the z-normalisation: mean and std of the raw rewards of both sides of every pair
            mismatched, prompts = _pair_plan(y, seed)  # imagereward_training_pairs' images, by index
            tok = blip_tok(prompts * 2, padding="max_length", truncation=True, max_length=IMAGEREWARD_MAX_TOKENS,
                           return_tensors="pt")
            raw = _rewards(ir_vision, ir_text, ir_head, torch.cat([clean, clean, clean[mismatched], degraded]), tok)
        norm = {"mean": float(raw.mean()), "std": float(raw.std()), "rewards": len(raw),
                "measured_on": "raw rewards of both images of every training pair (std with Bessel's correction)"}
        atomic_write_json(tmp / "imagereward" / IMAGEREWARD_NORMALISATION, norm)
        meta["imagereward"] = {"name": "toy ImageReward stand-in", **log, **IMAGEREWARD, "vision": VISION,
                               "text": BLIP_TEXT, "vocab": len(blip_tok), "normalisation": norm,
                               "parameters": sum(p.numel() for m in (ir_vision, ir_text, ir_head)
                                                 for p in m.parameters()),
                               "train_seconds": round(time.perf_counter() - t, 2)}

        # held-out numbers of the files as written, through the real loaders
        t = time.perf_counter()
        scorers = load_toy_scorers(tmp)
        meta["aesthetic"]["heldout"] = evaluate_toy_aesthetic(scorers["aesthetic"], x_test, y_test, seed)
        meta["pickscore"]["heldout"] = {"retrieval_accuracy": pickscore_retrieval(scorers["pickscore"], x_test, y_test),
                                        "chance": 0.1}
        meta["imagereward"]["heldout"] = imagereward_preference(scorers["imagereward"], x_test, y_test, seed)
        meta["eval_seconds"] = round(time.perf_counter() - t, 2)
        meta["seconds"] = round(time.perf_counter() - t_all, 2)
        meta["cpu_seconds"] = round(time.process_time() - cpu_all, 2)  # the wall clock counts other load too
        meta["files"] = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()) + [META_FILE]
        atomic_write_json(tmp / META_FILE, meta)
    return meta
