"""Table 3's compute, on the real-size configurations with random weights: FLOPs of every network pass of one SIM
iteration counted on the meta device (no memory, no GPU), the paper's budget held against them, and, on a device,
the time and peak memory of the iteration's passes by micro-batch, with and without gradient checkpointing.

    python benchmarks/bench_t2i.py                           # FLOP audit only (meta device, any machine)
    python benchmarks/bench_t2i.py --device cuda --bf16 --micro-batches 1,4,8,16,32 [--checkpointing]
    python benchmarks/bench_t2i.py --tiny --device cpu       # tiny configs: checks that the script runs

One SIM iteration per generator sample (Algorithm 2): the psi-step runs G forward without a graph and the fake
network forward and backward to its weights; the theta-step runs G forward and backward to its weights through the
teacher and the fake network, both frozen, backward to their input only. Gradient checkpointing recomputes the
forward of each of the four backpropagated passes once more.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

# PixArt-XL-2-512x512's transformer (its config.json): 610,856,096 parameters
PIXART_512 = dict(sample_size=64, num_layers=28, attention_head_dim=72, num_attention_heads=16, patch_size=2,
                  in_channels=4, out_channels=8, caption_channels=4096, cross_attention_dim=1152, attention_bias=True,
                  activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                  norm_elementwise_affine=False, norm_eps=1e-6)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", is_encoder_decoder=False)  # t5-v1_1-xxl's encoder
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              scaling_factor=0.18215)  # sd-vae-ft-ema
TINY_PIXART = dict(PIXART_512, sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=3,
                   caption_channels=32, cross_attention_dim=24)
TINY_T5 = dict(T5_XXL, vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
TINY_VAE = dict(SD_VAE, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
TOKENS = 120  # T5 max_length of PixArt and SIM
# The paper (Section 4.2, Appendix B.3): ~16k iterations at batch 1024 in 2 days on 4 A100; A100 bf16 dense peak
PAPER = dict(iterations=16_000, batch=1024, gpus=4, days=2.0, peak_flops=312e12)


def fmt(flops: float) -> str:
    return f"{flops / 1e12:.3f} TFLOP" if flops >= 1e10 else f"{flops / 1e6:.3f} MFLOP"


def count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def dit_passes(cfg: dict, device, dtype=torch.float32, batch: int = 1, checkpointing: bool = False):
    """The four kinds of DiT pass of a SIM iteration, as callables on ``batch`` samples."""
    import diffusers
    with torch.device(device):
        net = diffusers.PixArtTransformer2DModel(**cfg)
        if dtype != torch.float32:
            net = net.to(dtype)
        if checkpointing:
            net.enable_gradient_checkpointing()
        n = cfg["sample_size"]
        x = torch.randn(batch, cfg["in_channels"], n, n, dtype=dtype)
        text = torch.randn(batch, TOKENS, cfg["caption_channels"], dtype=dtype)
        mask = torch.ones(batch, TOKENS)
        t = torch.full((batch,), 440)
    kw = dict(encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask,
              added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)

    def forward_no_graph():
        net.train().requires_grad_(False)  # G in the psi-step
        with torch.no_grad():
            net(x, **kw)

    def backward_to_weights():
        net.train().requires_grad_(True)  # the fake network's psi-step, G's theta-step
        net(x, **kw)[0].float().square().mean().backward()
        net.zero_grad(set_to_none=True)

    def backward_to_input():
        net.eval().requires_grad_(False)  # teacher and fake network in the theta-step
        xi = x.detach().requires_grad_(True)
        net(xi, **kw)[0].float().square().mean().backward()

    return net, dict(forward_no_graph=forward_no_graph, backward_to_weights=backward_to_weights,
                     backward_to_input=backward_to_input)


SIM_ITERATION = dict(forward_no_graph=1, backward_to_weights=2, backward_to_input=2)  # passes per sample


def flop_audit(tiny: bool) -> None:
    import diffusers
    from transformers import T5Config, T5EncoderModel
    cfg = TINY_PIXART if tiny else PIXART_512
    net, passes = dit_passes(cfg, "meta")
    F = count(passes["forward_no_graph"])
    per = {k: count(f) for k, f in passes.items()}
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**(TINY_T5 if tiny else T5_XXL)))
        ids = torch.zeros(1, TOKENS, dtype=torch.long)
        vae = diffusers.AutoencoderKL(**(TINY_VAE if tiny else SD_VAE))
        n = cfg["sample_size"]
        z = torch.randn(1, 4, n, n)
    with torch.no_grad():
        t5_f = count(lambda: t5(input_ids=ids))
        vae_f = count(lambda: vae.decode(z))
    params = sum(p.numel() for p in net.parameters())
    print(f"config: {'tiny' if tiny else 'PixArt-XL-2-512'} DiT {params:,} parameters; T5 "
          f"{sum(p.numel() for p in t5.parameters()):,}; VAE {sum(p.numel() for p in vae.parameters()):,}")
    print(f"DiT forward, one sample (F): {fmt(F)}")
    for k, v in per.items():
        print(f"  {k}: {fmt(v)} = {v / F:.2f} F")
    print(f"T5 encoder, one {TOKENS}-token prompt: {fmt(t5_f)} = {t5_f / F:.2f} F; VAE decode: {fmt(vae_f)} = "
          f"{vae_f / F:.2f} F")
    sim = sum(per[k] * m for k, m in SIM_ITERATION.items())
    recompute = 4 * F  # one more forward for each of the four backpropagated passes
    print(f"one SIM iteration per sample: {fmt(sim)} = {sim / F:.2f} F; with checkpointing {fmt(sim + recompute)} = "
          f"{(sim + recompute) / F:.2f} F")
    if not tiny:
        total = PAPER["iterations"] * PAPER["batch"] * sim
        budget = PAPER["gpus"] * PAPER["days"] * 86400 * PAPER["peak_flops"]
        print(f"the paper's run ({PAPER['iterations']:,} iterations x batch {PAPER['batch']}): {total:.2e} FLOP "
              f"({PAPER['iterations'] * PAPER['batch'] * (sim + recompute):.2e} with checkpointing); "
              f"{PAPER['gpus']} A100 x {PAPER['days']:g} days at bf16 peak: {budget:.2e} FLOP: it needs "
              f"{total / budget:.0%} of peak ({PAPER['iterations'] * PAPER['batch'] * (sim + recompute) / budget:.0%} "
              "with checkpointing)")


def time_passes(a) -> None:
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    cfg = TINY_PIXART if a.tiny else PIXART_512
    for mb in (int(b) for b in a.micro_batches.split(",")):
        try:
            _, passes = dit_passes(cfg, device, dtype, mb, a.checkpointing)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = {}
            for k, f in passes.items():
                f()
                sync()
                times = []
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    f()
                    sync()
                    times.append(time.perf_counter() - t0)
                seconds[k] = statistics.median(times)
            it = sum(seconds[k] * m for k, m in SIM_ITERATION.items())
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
            print(f"micro-batch {mb}: SIM iteration {it:.3f} s = {mb / it:.1f} images/s; peak {peak:.1f} GiB; "
                  + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in seconds.items()), flush=True)
        except torch.OutOfMemoryError:
            print(f"micro-batch {mb}: out of memory", flush=True)
            break


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs of the same classes")
    ap.add_argument("--device", help="also time the passes on this device (cuda, cpu)")
    ap.add_argument("--micro-batches", default="1,4,8,16,32")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--checkpointing", action="store_true", help="per-block gradient checkpointing")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if a.device and a.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is visible")
    print(f"config: torch={torch.__version__} device={a.device or 'meta only'} bf16={a.bf16} "
          f"checkpointing={a.checkpointing}", flush=True)
    flop_audit(a.tiny)
    if a.device:
        time_passes(a)


if __name__ == "__main__":
    main()
