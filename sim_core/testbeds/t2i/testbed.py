"""The text-to-image testbeds at run time: the PixArt teacher in SIM's EDM form (guided or not), prompts drawn as text
conditioning, the one-step generator's images scored for Table 3, the teacher rows (DPM-Solver with CFG), and the
toy's asset builders. Every file is checked when the testbed loads, before any training."""
from __future__ import annotations

from pathlib import Path

import torch

from sim_core.errors import CheckpointError, ConfigError
from sim_core.testbeds.base import Testbed, mean_over_draws, net_dtype_device, save_image_grid
from sim_core.testbeds.t2i.cond import TextCond
from sim_core.testbeds.t2i.edm_pixart import GuidedDenoiser, PixArtEDM

NULL_PROMPT = ""      # the unconditional caption (diffusers' PixArt CFG encodes "" too)
FIGURE_PROMPTS = 100   # the evaluation prompts a sample picture shows (the toy has 60)
ENCODE_UPFRONT = 4096  # prompt pools up to this size are encoded once; larger ones (SAM-LLaVA) batch by batch
# The toy teacher's budget, measured on this 2-core machine (one thread): 1000 iterations at batch 128 with a 2-layer
# DiT take ~45 s and reach prompt alignment 0.98 / 0.90 (training / held-out templates, CFG 4.5, 20 DPM steps; 1500
# iterations: 1.00 / 0.90; 2 heads instead of 4: 0.88 / 0.58).
TOY_TEACHER = dict(iterations=1000, batch_size=128, lr=3e-3, dit=dict(num_layers=2), max_tokens=16)


def load_transformer(folder):
    """The DiT of a diffusers pipeline folder (``transformer/``, or the folder itself), local files only."""
    from diffusers import PixArtTransformer2DModel
    root = Path(folder)
    sub = root / "transformer" if (root / "transformer").is_dir() else root
    if not (sub / "config.json").is_file():
        raise ConfigError(f"teacher folder {folder} has no transformer/config.json (a diffusers PixArt folder)")
    try:
        net = PixArtTransformer2DModel.from_pretrained(str(sub), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot load the PixArt transformer from {sub}: {str(e).splitlines()[0][:200]}") \
            from None
    return net.eval().requires_grad_(False)


def load_vae(folder, latent_channels: int):
    """sd-vae-ft-ema (diffusers AutoencoderKL folder) or, for None, the toy's exact pixel-unshuffle map."""
    from sim_core.testbeds.t2i.latents import PixelUnshuffleVAE
    if folder is None:
        vae = PixelUnshuffleVAE()
    else:
        from diffusers import AutoencoderKL
        if not Path(folder, "config.json").is_file():
            raise ConfigError(f"VAE folder {folder} has no config.json (a diffusers AutoencoderKL folder)")
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)
    if vae.config.latent_channels != latent_channels:
        raise ConfigError(f"the VAE {folder or '(pixel-unshuffle)'} has {vae.config.latent_channels} latent channels, "
                          f"the teacher takes {latent_channels}")
    return vae


def _prompts(path, fmt, cfg, limit=None) -> list[str]:
    from sim_core.testbeds.t2i.prompts import load_prompts
    kwargs = {"rule": cfg.caption_rule} if fmt == "coco" else {}
    texts = [p.text for p in load_prompts(fmt, path, **kwargs)]
    return texts[:limit] if limit else texts


class T2ITestbed(Testbed):
    """``eval_prompts``: (prompt, digit or None, group) per evaluation prompt; the toy's groups are its training and
    held-out templates, whose alignment accuracies are reported apart."""

    def __init__(self, cfg):
        from sim_core.testbeds.t2i.text import TextEncoder
        net = load_transformer(cfg.teacher)
        self.text = TextEncoder.from_folders(Path(cfg.text_encoder) / "tokenizer", Path(cfg.text_encoder) /
                                             "text_encoder", dtype=getattr(torch, cfg.text_encoder_dtype),
                                             device=cfg.text_encoder_device, max_length=cfg.max_tokens)
        width = self.text.encoder.config.d_model
        if net.config.caption_channels != width:
            raise ConfigError(f"the text encoder {cfg.text_encoder} gives {width}-d states, the teacher's caption "
                              f"projection takes {net.config.caption_channels}: they do not belong together")
        c, size = net.config.in_channels, net.config.sample_size
        self.vae = load_vae(cfg.vae, c).to(cfg.scorer_device)
        self.cfg, self.net = cfg, net
        self.null = self.text([NULL_PROMPT])
        D = PixArtEDM(net).eval().requires_grad_(False)
        D_teacher = D if cfg.teacher_guidance == 1.0 else GuidedDenoiser(D, self.null, cfg.teacher_guidance).eval()
        meta = dict(data_shape=[c, size, size], label_dim=0, testbed=cfg.kind, teacher=str(cfg.teacher),
                    sigma_min=D.sigma_min, sigma_max=D.sigma_max)
        super().__init__(D_teacher, meta, D_init=D)
        self.train_prompts, self.eval_prompts = self._prompt_sets(cfg)
        self.train_table = self.text(self.train_prompts) if len(self.train_prompts) <= ENCODE_UPFRONT else None
        self.eval_table = self.text([p for p, _, _ in self.eval_prompts])
        self.scorers = self._load_scorers(cfg)
        self.classifier = None
        if cfg.classifier is not None:
            from sim_core.testbeds.digits.classifier import load_classifier
            self.classifier = load_classifier(cfg.classifier)

    # ---- prompts ----------------------------------------------------------------------------------------------
    @staticmethod
    def _prompt_sets(cfg):
        if cfg.kind == "t2i_digits":
            from sim_core.testbeds.t2i.toy import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, all_prompts
            train = [p for _, p in all_prompts(TRAIN_TEMPLATES)]
            evals = [(p, d, "train") for d, p in all_prompts(TRAIN_TEMPLATES)] + \
                    [(p, d, "heldout") for d, p in all_prompts(HELDOUT_TEMPLATES)]
            return train, evals
        for key in ("train_prompts", "eval_prompts"):
            if getattr(cfg, key) is None:
                raise ConfigError(f"testbed.{key} is required for the {cfg.kind} testbed")
        train = _prompts(cfg.train_prompts, cfg.train_prompts_format, cfg)
        evals = [(p, None, "eval") for p in _prompts(cfg.eval_prompts, cfg.eval_prompts_format, cfg,
                                                      cfg.eval_prompts_limit)]
        return train, evals

    def draw_cond(self, n, rng, dtype=torch.float32, device="cpu"):
        """n training prompts drawn uniformly with replacement; a share ``caption_dropout`` replaced by the null."""
        idx = torch.randint(0, len(self.train_prompts), (n,), generator=rng)
        cond = self.train_table[idx] if self.train_table is not None else \
            self.text([self.train_prompts[i] for i in idx.tolist()])
        if self.cfg.caption_dropout > 0:
            drop = torch.rand(n, generator=rng) < self.cfg.caption_dropout
            cond = TextCond(torch.where(drop[:, None, None], self.null.states, cond.states),
                            torch.where(drop[:, None], self.null.mask, cond.mask))
        return cond.to(device, dtype)

    # ---- scoring ----------------------------------------------------------------------------------------------
    @staticmethod
    def _load_scorers(cfg) -> dict:
        from sim_core.testbeds.t2i import scorers as S
        out = {}
        device = cfg.scorer_device
        if cfg.aesthetic_clip and cfg.aesthetic_head:
            out["aesthetic"] = S.AestheticScorer.from_files(cfg.aesthetic_clip, cfg.aesthetic_head, device)
        if cfg.pickscore_model and cfg.pickscore_processor:
            out["pickscore"] = S.PickScorer.from_folders(cfg.pickscore_model, cfg.pickscore_processor, device)
        if cfg.imagereward and cfg.imagereward_tokenizer:
            out["imagereward"] = S.load_imagereward(cfg.imagereward, cfg.imagereward_tokenizer, device)
        return out

    def eval_batch(self, n: int):
        """Which evaluation prompt each of n samples gets: every prompt in turn."""
        return torch.arange(n) % len(self.eval_prompts)

    def metrics(self, latents: torch.Tensor, which: torch.Tensor, eval_cfg) -> dict:
        """Table 3's scores (means over the samples) of latents made for the eval prompts ``which``."""
        images = torch.cat([self._decode(z) for z in latents.float().split(eval_cfg.batch_size)])
        prompts = [self.eval_prompts[i][0] for i in which.tolist()]
        b = eval_cfg.batch_size
        batches = [(images[i:i + b], prompts[i:i + b]) for i in range(0, len(images), b)]
        out = {}
        for key, scorer in self.scorers.items():
            parts = [scorer(im) if key == "aesthetic" else scorer(im, text) for im, text in batches]
            if key == "pickscore":
                out["pickscore"] = torch.cat([p["cosine"] for p in parts]).mean().item()
                out["pickscore_scaled"] = torch.cat([p["score"] for p in parts]).mean().item()
            else:
                out[key] = torch.cat(parts).mean().item()
        if self.classifier is not None:
            out.update(self._digit_metrics(latents, which))
        return out

    def _digit_metrics(self, latents, which) -> dict:
        """The toy's exact measures: does the digits CNN read the prompt's digit (per template group), and FID in
        its features against the training digits."""
        import torch.nn.functional as F

        from sim_core.testbeds.digits.classifier import accuracy
        from sim_core.testbeds.digits.fidelity import digits_fidelity
        x = F.pixel_shuffle(latents.float(), 2).clamp(-1, 1)
        digit = torch.tensor([self.eval_prompts[i][1] for i in which.tolist()])
        group = [self.eval_prompts[i][2] for i in which.tolist()]
        out = {}
        for g in ("train", "heldout"):
            pick = torch.tensor([k == g for k in group])
            if bool(pick.any()):
                out[f"align_{g}"] = accuracy(self.classifier, x[pick], digit[pick])
        out["fid"] = digits_fidelity(x, self.cfg.classifier, real="train", kid_subsets=1)["fid"]
        return out

    @torch.no_grad()
    def one_step_latents(self, G, n: int, seed: int, batch_size: int):
        """The generator's latents for n evaluation samples (prompts in turn), fixed noise per seed."""
        dtype, device = net_dtype_device(G)
        rng = torch.Generator().manual_seed(seed)
        which = self.eval_batch(n)
        out = []
        for part in which.split(batch_size):
            z = G.sample_z(len(part), self.data_shape, rng, dtype, device)
            out.append(G(z, self.eval_table[part].to(device, dtype)).float().cpu())
        return torch.cat(out), which

    def evaluator(self, eval_cfg, device, dtype):
        def evaluate(G, step):
            latents, which = self.one_step_latents(G, eval_cfg.num_samples, eval_cfg.seed, eval_cfg.batch_size)
            return self.metrics(latents, which, eval_cfg)
        return evaluate

    def final_metrics(self, G, eval_cfg, seeds, protocol=None, device="cpu") -> dict:
        return mean_over_draws([self.evaluator(eval_cfg, device, None)(G, -1) for eval_cfg in
                                (eval_cfg.model_copy(update={"seed": int(s)}) for s in seeds)])

    def collapse_reason(self, G, seed: int, n: int = 1000) -> str | None:
        from sim_core.testbeds.base import collapse_reason
        latents, _ = self.one_step_latents(G, min(n, 500), seed, 250)
        return collapse_reason(latents, None)

    # ---- the teacher rows -------------------------------------------------------------------------------------
    def teacher_latents(self, steps: int, n: int, seed: int, batch_size: int, device=None):
        """The teacher's samples on ``device`` (None: where it is); the text states, made in the encoder's dtype on
        its device, are moved to the teacher's. The noise is drawn on the CPU: the same on every device."""
        from sim_core.testbeds.t2i.teacher import sample_teacher
        if device is not None:
            self.net.to(device)  # the teacher rows' job evaluates the teacher alone
        dtype, device = net_dtype_device(self.net)
        g = torch.Generator().manual_seed(10_000 + seed)
        which = self.eval_batch(n)
        null = self.null.to(device, dtype)
        out = [sample_teacher(self.net, self.eval_table[part].to(device, dtype), null, steps=steps,
                              guidance=self.cfg.sampler_guidance, generator=g, shape=self.data_shape).float().cpu()
               for part in which.split(batch_size)]
        return torch.cat(out), which

    def teacher_metrics(self, nfe: int, seed: int, eval_cfg, protocol=None, device="cpu") -> dict:
        """The teacher's DPM-Solver++ at ``nfe`` steps (each two network calls under CFG), scored as the students."""
        latents, which = self.teacher_latents(nfe, eval_cfg.num_samples, seed, eval_cfg.batch_size, device)
        return self.metrics(latents, which, eval_cfg)

    def _decode(self, latents):
        """uint8 images on the CPU (what the scorers' processors take), decoded where the VAE is."""
        from sim_core.testbeds.t2i.latents import decode_to_uint8
        return decode_to_uint8(self.vae, latents.to(self.cfg.scorer_device)).cpu()

    def _save_images(self, latents, path) -> None:
        """A PNG grid, and beside it (.pt) the uint8 images with their prompts: what the Figure-3 grid reads."""
        from sim_core.files import atomic_torch_save
        images = self._decode(latents)
        save_image_grid(images.float() / 255, path, nrow=10, scale=4)
        atomic_torch_save({"images": images, "prompts": [p for p, _, _ in self.eval_prompts[:len(images)]]},
                          Path(path).with_suffix(".pt"))

    def save_samples(self, G, path, seed):
        """One sample per evaluation prompt (the toy: rows of digits, one row per template), fixed noise."""
        n = min(len(self.eval_prompts), FIGURE_PROMPTS)
        self._save_images(self.one_step_latents(G, n, seed, 100)[0], path)

    def save_teacher_samples(self, nfe: int, seed: int, path) -> None:
        """The teacher's samples for the same prompts as save_samples (the teacher rows' picture)."""
        n = min(len(self.eval_prompts), FIGURE_PROMPTS)
        self._save_images(self.teacher_latents(nfe, n, seed, 100)[0], path)


def load(cfg) -> T2ITestbed:
    return T2ITestbed(cfg)


# ---- the toy's assets ----------------------------------------------------------------------------------------------
def build_text_encoder(out, seed: int = 0, **_) -> dict:
    """The toy's tiny frozen T5 and its tokenizer (sim_core/testbeds/t2i/toy.py)."""
    from sim_core.testbeds.t2i.toy import build_toy_t5
    return build_toy_t5(out, seed=seed)


def build_teacher(out, text_encoder: str, seed: int = 0, iterations=None, batch_size=None, **_) -> dict:
    """The toy PixArt teacher (TOY_TEACHER, some replaced), trained on the toy T5's states of its prompts."""
    from sim_core.testbeds.t2i.teacher import train_toy_teacher
    hp = {**TOY_TEACHER, **{k: v for k, v in dict(iterations=iterations, batch_size=batch_size).items() if v}}
    meta = train_toy_teacher(out, text_encoder, seed=seed, log_every=250, **hp)
    return {k: meta[k] for k in ("iterations", "batch_size", "lr", "seconds")} | {"final_loss": meta["loss_curve"][-1]}


def build_scorers(out, seed: int = 0, **_) -> dict:
    """The toy stand-ins of the three scorers, trained here (sim_core/testbeds/t2i/toy_scorers.py)."""
    from sim_core.testbeds.t2i.toy_scorers import build_toy_scorers
    return build_toy_scorers(out, seed=seed)
