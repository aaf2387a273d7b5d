"""Text-to-image (Table 3): PixArt-alpha in SIM's EDM form, distilled data-free in latent space from prompts alone.

Two testbeds share one runtime (testbed.py) and differ only in their files and prompts:
- ``t2i_digits`` (toy scale, built here): scikit-learn's digits as 4 x 4 x 4 latents, prompts from templates per
  digit (some held out), a tiny frozen T5, a small PixArt DiT teacher trained with PixArt's DDPM objective, the
  exact pixel-unshuffle "VAE", stand-ins for the three scorers trained here in the same classes, and what a toy can
  measure exactly: the prompt-alignment accuracy of the digits CNN and FID in its features.
- ``t2i`` (paper scale): PixArt-XL-2-512x512 with T5-XXL and sd-vae-ft-ema, trained on SAM-LLaVA captions and
  scored on COCO-2017 validation captions by the published aesthetic predictor, ImageReward and PickScore.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from sim_core.testbeds.spec import Metric, TestbedConfig, TestbedSpec
from sim_core.testbeds.t2i import assets  # noqa: F401  (registers the paper-scale files in the asset manifest)



class T2IConfig(TestbedConfig):
    kind: Literal["t2i"] = "t2i"
    teacher: str                         # a diffusers pipeline folder with transformer/ (PixArt-XL-2-512x512)
    text_encoder: str                    # a folder with tokenizer/ and text_encoder/ (T5, save_pretrained layout)
    vae: Optional[str] = None            # an AutoencoderKL folder (sd-vae-ft-ema); None: exact pixel-unshuffle (toy)
    max_tokens: int = Field(120, ge=1)   # PixArt-alpha / SIM: T5 max_length 120
    # Where the frozen T5 runs and in what precision: the paper is silent. T5-XXL is 9.5 GB in bf16 (PixArt's
    # pipeline runs it in its own dtype); the toy's tiny T5 stays on the CPU in float32.
    text_encoder_device: Literal["cpu", "cuda"] = "cpu"
    text_encoder_dtype: Literal["float32", "bfloat16"] = "float32"
    # Where the VAE decodes and the three scorers run during evaluation: the paper is silent. On the GPU at paper
    # scale (5000 images of 512 px per evaluation); the toy's tiny stand-ins stay on the CPU.
    scorer_device: Literal["cpu", "cuda"] = "cpu"
    train_prompts: Optional[str] = None  # what distillation draws prompts from (SAM-LLaVA captions, B.3)
    train_prompts_format: Literal["text", "coco", "sam_llava"] = "sam_llava"
    eval_prompts: Optional[str] = None   # what the scorers see (COCO-2017 val captions, Table 3)
    eval_prompts_format: Literal["text", "coco", "sam_llava"] = "coco"
    caption_rule: Literal["lowest_id", "seeded"] = "lowest_id"  # which COCO caption per image: the paper is silent
    eval_prompts_limit: Optional[int] = Field(None, ge=1)        # the first N eval prompts; None: all
    # Classifier-free guidance of the teacher's score in the theta-step, D(null) + w (D(text) - D(null)): the paper
    # is silent; 4.5 is PixArt's default (diffusers' pipeline) and SiD-LSG guides its teacher too. 1: no guidance.
    teacher_guidance: float = Field(4.5, ge=0)
    # Share of distillation prompts replaced by the null prompt "": the paper is silent; 0 keeps every caption.
    caption_dropout: float = Field(0.0, ge=0, lt=1)
    sampler_guidance: float = Field(4.5, ge=0)  # the teacher rows' CFG: Table 3 is silent; diffusers' default 4.5
    # The three scorers (paper: the published files; toy: the stand-ins of `scorers`); None: not scored
    aesthetic_clip: Optional[str] = None      # CLIP ViT-L/14 folder (vision tower + processor)
    aesthetic_head: Optional[str] = None      # sac+logos+ava1-l14-linearMSE.pth
    pickscore_model: Optional[str] = None     # PickScore_v1 folder
    pickscore_processor: Optional[str] = None  # CLIP-ViT-H-14 processor folder
    imagereward: Optional[str] = None         # ImageReward.pt (med_config.json beside it)
    imagereward_tokenizer: Optional[str] = None  # bert-base-uncased tokenizer folder
    classifier: Optional[str] = None          # toy: the digits CNN (alignment accuracy, FID in its features)


class DigitsT2IConfig(T2IConfig):
    kind: Literal["t2i_digits"] = "t2i_digits"
    max_tokens: int = Field(16, ge=1)    # the toy prompts are at most 8 tokens; 120 would only pad (2x slower)


SCORES = (Metric("aesthetic", "aesthetic score", lower_is_better=False, column="aes_score"),
          Metric("imagereward", "ImageReward", lower_is_better=False, column="image_reward"),
          Metric("pickscore", "PickScore (cosine)", lower_is_better=False, column="pick_score"),
          Metric("pickscore_scaled", "PickScore (logit-scaled)", lower_is_better=False))
TOY_SCORES = (Metric("aesthetic", "toy aesthetic stand-in", lower_is_better=False, column="aes_score"),
              Metric("imagereward", "toy ImageReward stand-in", lower_is_better=False, column="image_reward"),
              Metric("pickscore", "toy PickScore stand-in (cosine)", lower_is_better=False, column="pick_score"),
              Metric("pickscore_scaled", "toy PickScore stand-in (logit-scaled)", lower_is_better=False),
              Metric("align_train", "prompt alignment, training templates", lower_is_better=False,
                     column="align_train"),
              Metric("align_heldout", "prompt alignment, held-out templates", lower_is_better=False,
                     column="align_heldout"),
              Metric("fid", "FID (digits CNN)", lower_is_better=True, column="fid"))

RUNTIME = "sim_core.testbeds.t2i.testbed:load"
SAMPLER = "DPM-Solver++ (PixArt's pipeline) with classifier-free guidance"

TESTBED = TestbedSpec(
    name="t2i",
    config=T2IConfig,
    metrics=SCORES,
    datasets={False: "PixArt-alpha 512px: SAM-LLaVA captions to distil on, COCO-2017 val captions to score"},
    assets={False: {"teacher": "pixart_512", "text_encoder": "pixart_512", "vae": "pixart_512/vae",
                    "train_prompts": "sam_llava", "eval_prompts": "coco_captions",
                    "aesthetic_clip": "clip_vit_l14", "aesthetic_head": "aesthetic_head",
                    "pickscore_model": "pickscore", "pickscore_processor": "clip_h_processor",
                    "imagereward": "imagereward/ImageReward.pt", "imagereward_tokenizer": "bert_base_uncased"}},
    runtime=RUNTIME,
    features="LAION aesthetic predictor v2, ImageReward v1.0 and PickScore v1 (means over prompts)",
    reference="COCO-2017 val captions, one per image (testbed.caption_rule)",
    teacher_sampler=SAMPLER,
    teacher_steps="DPM-Solver steps",
)

TOY_TESTBED = TestbedSpec(
    name="t2i_digits",
    config=DigitsT2IConfig,
    metrics=TOY_SCORES,
    datasets={False: "toy text-to-image: sklearn 8x8 digits as 4x4x4 latents, template prompts"},
    assets={False: {"teacher": "teacher_t2i_digits", "text_encoder": "t5_toy",
                    "aesthetic_clip": "scorers_toy/aesthetic/clip", "aesthetic_head": "scorers_toy/aesthetic/head.pth",
                    "pickscore_model": "scorers_toy/pickscore/model",
                    "pickscore_processor": "scorers_toy/pickscore/processor",
                    "imagereward": "scorers_toy/imagereward/ImageReward.pt",
                    "imagereward_tokenizer": "scorers_toy/imagereward/tokenizer", "classifier": "classifier"}},
    runtime=RUNTIME,
    builders={"text_encoder": "sim_core.testbeds.t2i.testbed:build_text_encoder",
              "teacher": "sim_core.testbeds.t2i.testbed:build_teacher",
              "scorers": "sim_core.testbeds.t2i.testbed:build_scorers"},
    folders=("text_encoder", "teacher", "scorers"),
    features="toy stand-ins of the three scorers; prompt alignment and FID in digits-CNN features",
    reference="the prompts' digits (alignment); the 1438 training digits (FID)",
    teacher_sampler=SAMPLER,
    teacher_steps="DPM-Solver steps",
)
