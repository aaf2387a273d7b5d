"""NVIDIA EDM's DDPM++ network (``SongUNet``), written for this project.

Behaviour follows NVlabs/edm ``training/networks.py`` (commit 008a4e5; docs/reference-code.md#nvidias-edm-checkpoints)
for the variant the CIFAR-10 "vp" checkpoints use: positional noise embedding, standard encoder and decoder. The layer
classes carry NVIDIA's class names and attribute names (``in_channels``, ``num_groups``, ``skip_scale``, ...) and the
network has NVIDIA's parameter/buffer names, so that a checkpoint written by NVIDIA's code maps onto it tensor by tensor
(``sim_core.testbeds.cifar10.edm_pickle``) and the attributes stored in such a checkpoint can be compared one by one.

The forward signature is the project's raw-network signature ``F(x_in, noise_labels, class_labels=None,
augment_labels=None)``: ``sim_core.core.edm.EDMPrecond(SongUNet(...))`` is the EDM denoiser, with state-dict names
``model.<name>`` as in NVIDIA's EDMPrecond.

Every layer casts its weights to the dtype of its input (as NVIDIA's layers do), so a float32 network can be run on
float64 inputs. NVIDIA computes the attention logits and softmax in float32 whatever the input precision; here they
are computed in ``promote_types(input dtype, float32)``: float32 for half/float32 inputs (identical to NVIDIA's),
float64 for float64 inputs (NVIDIA's EDMPrecond never feeds float64 to the network).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sim_core.errors import ConfigError
from sim_core.nets.embedding import PositionalEmbedding

# ---------------------------------------------------------------------------------------------------------------
# Weight initialisation (EDM training/networks.py: weight_init). Every layer draws its weight and then its bias from
# the chosen distribution, in construction order; the bias draw is multiplied by init_bias (0 by default), so it is
# zero but still consumes random numbers. The same draws are made here in the same order, so under the same torch
# seed a freshly built network should start from NVIDIA's numbers (not checked against NVIDIA's code here).


_SKIP_INIT = [0]  # > 0 inside `uninitialized()`


@contextmanager
def uninitialized():
    """Build networks with uninitialised (torch.empty) weights and no random draws: for callers that overwrite
    every tensor right away (checkpoint loading). GroupNorm still starts at weight 1, bias 0."""
    _SKIP_INIT[0] += 1
    try:
        yield
    finally:
        _SKIP_INIT[0] -= 1


def _draw_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int, gain: float) -> torch.Tensor:
    """gain times a tensor of ``shape`` with the variance-scaling initialisation named ``mode``."""
    if mode not in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"):
        raise ConfigError(f"unknown weight init mode {mode!r}; valid: kaiming_normal, kaiming_uniform, "
                          f"xavier_normal, xavier_uniform")
    if _SKIP_INIT[0]:
        return torch.empty(*shape)
    centred_uniform = lambda: torch.rand(*shape) * 2 - 1  # noqa: E731  U(-1, 1)
    if mode == "xavier_uniform":     # Glorot: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        w = math.sqrt(6 / (fan_in + fan_out)) * centred_uniform()
    elif mode == "xavier_normal":    # Glorot: N(0, 2 / (fan_in + fan_out))
        w = math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    elif mode == "kaiming_uniform":  # U(-a, a), a = sqrt(3 / fan_in): variance 1 / fan_in
        w = math.sqrt(3 / fan_in) * centred_uniform()
    else:                            # kaiming_normal: N(0, 1 / fan_in)
        w = math.sqrt(1 / fan_in) * torch.randn(*shape)
    return w * gain


class Linear(nn.Module):
    """y = x W^T + b, W of shape (out_features, in_features); weights cast to the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_draw_init([out_features, in_features], **fans, gain=init_weight))
        self.bias = nn.Parameter(_draw_init([out_features], **fans, gain=init_bias)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = _add_(y, self.bias.to(x.dtype))
        return y


def _add_(y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y + b into y's own memory, as EDM's layers do (no allocation; y must be an intermediate that no backward
    needs). Where the dtypes differ (under autocast) it stays out of place, so the result's dtype is y + b's."""
    return y.add_(b) if y.dtype == b.dtype else y + b  # b never has more elements than y here


class Conv2d(nn.Module):
    """A ``kernel`` x ``kernel`` convolution (same padding) with optional 2x resampling before it.

    Resampling uses the separable FIR ``resample_filter`` (outer product, normalised to sum 1), applied per channel:
    down = stride-2 depthwise convolution with it ([1,1]: 2x2 box average), up = stride-2 depthwise transposed
    convolution with 4x it ([1,1]: nearest-neighbour). ``kernel=0`` gives a pure resampler without weights.
    Only the non-fused order of EDM's Conv2d is implemented (resample, then convolve): it is the one the
    DDPM++ blocks use (``fused_resample`` is only set by the NCSN++ 'residual' encoder).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ConfigError("Conv2d: up and down are exclusive")
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = bool(up)
        self.down = bool(down)
        self.fused_resample = False  # NVIDIA's attribute; only the non-fused path exists here
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        if kernel:
            self.weight = nn.Parameter(_draw_init([out_channels, in_channels, kernel, kernel], **fans,
                                                   gain=init_weight))
            self.bias = nn.Parameter(_draw_init([out_channels], **fans, gain=init_bias)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        taps = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        fir = torch.outer(taps, taps)[None, None] / taps.sum() ** 2  # (1, 1, k, k), sums to 1
        self.register_buffer("resample_filter", fir if (up or down) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            fir = self.resample_filter.to(x.dtype)
            pad = (fir.shape[-1] - 1) // 2
            depthwise = fir.repeat(self.in_channels, 1, 1, 1)  # one copy of the filter per channel
            if self.up:  # x4: each input pixel spreads over a 2x2 output patch (nearest for the [1,1] filter)
                x = F.conv_transpose2d(x, depthwise * 4, stride=2, padding=pad, groups=self.in_channels)
            else:
                x = F.conv2d(x, depthwise, stride=2, padding=pad, groups=self.in_channels)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            b = self.bias.to(x.dtype).reshape(1, -1, 1, 1)
            fresh = self.weight is not None or self.up or self.down  # x is this layer's own output, not its input
            x = _add_(x, b) if fresh else x + b
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(num_groups, C // min_channels_per_group) groups (EDM: 32 groups, >= 4 ch each)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1 or num_channels % self.num_groups:
            raise ConfigError(f"GroupNorm: {num_channels} channels cannot be split into "
                              f"min({num_groups}, {num_channels}//{min_channels_per_group}) equal groups")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax over keys of q^T k / sqrt(c) for q, k of shape (batch*heads, c, positions).

    Returns (batch*heads, queries, keys) in q's dtype. As in EDM's AttentionOp, k is divided by sqrt(c) in its own
    dtype and the product and softmax run in (at least) float32.
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    k = k / math.sqrt(k.shape[1])
    logits = torch.einsum("ncq,nck->nqk", q.to(acc), k.to(acc))
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """EDM's unified residual block (DDPM++ settings come from SongUNet).

    x -> GroupNorm -> SiLU -> conv0 (3x3, optional resampling first) -> + affine(emb) [or scale/shift when
    adaptive_scale] -> GroupNorm -> SiLU -> dropout -> conv1 (3x3), plus skip(x), times skip_scale. With attention:
    then + proj(self-attention(GroupNorm(x))), times skip_scale again.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False,
                 down: bool = False, attention: bool = False, num_heads: Optional[int] = None,
                 channels_per_head: int = 64, dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False,
                 adaptive_scale: bool = True, init: Optional[dict] = None, init_zero: Optional[dict] = None,
                 init_attn: Optional[dict] = None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else dict(init_weight=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
            if self.num_heads < 1 or out_channels % self.num_heads:
                raise ConfigError(f"UNetBlock: {out_channels} channels cannot be split into {self.num_heads} heads")
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # construction order = NVIDIA's (it fixes the order of the random draws)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            # a 1x1 projection when asked (DDPM++: resample_proj=True) or when the width changes, else resample only
            proj_kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=proj_kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                              **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x_in = x
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(_add_(h, params)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = _add_(h, self.skip(x_in) if self.skip is not None else x_in) * self.skip_scale

        if self.num_heads:
            n, c = h.shape[:2]
            # the 3C qkv channels are grouped per head, then per channel as (q, k, v) triples: channel
            # head*3*(C/heads) + 3*i + j holds q (j=0), k (j=1), v (j=2) of channel i of that head
            qkv = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, -1)
            q, k, v = qkv.unbind(2)
            w = attention_weights(q, k)                     # (n*heads, queries, keys)
            a = torch.einsum("nqk,nck->ncq", w, v)         # weighted values, (n*heads, c/heads, queries)
            h = _add_(self.proj(a.reshape(h.shape)), h) * self.skip_scale
        return h


# NVIDIA's SongUNet defaults (training/networks.py), used for arguments a checkpoint does not record
SONGUNET_DEFAULTS = dict(label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2],
                         channel_mult_emb=4, num_blocks=4, attn_resolutions=[16], dropout=0.10, label_dropout=0.0,
                         embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                         decoder_type="standard", resample_filter=[1, 1])


class SongUNet(nn.Module):
    """DDPM++ U-Net of EDM (Song et al. 2021 architecture as re-implemented in NVlabs/edm), 'positional' noise
    embedding and 'standard' encoder/decoder only.

    Mapping: emb = SiLU(L1(SiLU(L0(swap(PE(c_noise)) + map_label(onehot * sqrt(label_dim)) + map_augment(aug)))))
    Encoder at each resolution: a 3x3 stem (first level) or a downsampling block, then ``num_blocks`` blocks;
    every encoder output is kept as a skip. Decoder: two blocks at the lowest resolution (the first with attention)
    or an upsampling block, then ``num_blocks + 1`` blocks that each take one skip (concatenated whenever the
    channel count differs from the block's input width). Output = aux_conv(SiLU(aux_norm(x))).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[float] = (1, 1)):
        for arg, value, valid in (("embedding_type", embedding_type, "positional"),
                                  ("encoder_type", encoder_type, "standard"),
                                  ("decoder_type", decoder_type, "standard")):
            if value != valid:
                raise ConfigError(f"SongUNet {arg}={value!r} is not implemented: only {valid!r} (DDPM++, the "
                                  f"architecture of EDM's CIFAR-10 vp checkpoints)")
        channel_mult, attn_resolutions = [int(m) for m in channel_mult], [int(r) for r in attn_resolutions]
        resample_filter = list(resample_filter)
        for name, value in (("img_resolution", img_resolution), ("in_channels", in_channels),
                            ("out_channels", out_channels), ("model_channels", model_channels),
                            ("channel_mult_emb", channel_mult_emb), ("channel_mult_noise", channel_mult_noise)):
            if int(value) != value or value < 1:
                raise ConfigError(f"SongUNet {name} must be a positive integer, got {value!r}")
        if not channel_mult or min(channel_mult) < 1 or num_blocks < 0 or label_dim < 0 or augment_dim < 0:
            raise ConfigError(f"SongUNet: bad sizes channel_mult={channel_mult} num_blocks={num_blocks} "
                              f"label_dim={label_dim} augment_dim={augment_dim}")
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ConfigError(f"SongUNet img_resolution {img_resolution} is not divisible by "
                              f"2^{len(channel_mult) - 1} (one halving per extra channel_mult level)")
        if not (0 <= dropout < 1 and 0 <= label_dropout < 1):
            raise ConfigError(f"SongUNet dropout {dropout} / label_dropout {label_dropout} must lie in [0, 1)")
        if not resample_filter or sum(resample_filter) == 0:
            raise ConfigError(f"SongUNet resample_filter {resample_filter} must be non-empty with a non-zero sum")
        super().__init__()
        self.init_kwargs = dict(img_resolution=int(img_resolution), in_channels=int(in_channels),
                                out_channels=int(out_channels), label_dim=int(label_dim),
                                augment_dim=int(augment_dim), model_channels=int(model_channels),
                                channel_mult=channel_mult, channel_mult_emb=int(channel_mult_emb),
                                num_blocks=int(num_blocks), attn_resolutions=attn_resolutions,
                                dropout=float(dropout), label_dropout=float(label_dropout),
                                embedding_type=embedding_type, channel_mult_noise=int(channel_mult_noise),
                                encoder_type=encoder_type, decoder_type=decoder_type,
                                resample_filter=resample_filter)
        self.label_dropout = float(label_dropout)
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        # DDPM++ initialisation (EDM SongUNet): Glorot-uniform everywhere; the last conv of each residual branch,
        # the attention output projection and the output conv start at 1e-5 of that scale, so every block starts
        # close to its skip path and the network output close to 0; qkv weights are scaled by sqrt(0.2).
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        # DDPM++ block settings (EDM SongUNet): one attention head, residual scale sqrt(1/2), GroupNorm eps 1e-6,
        # 1x1 projection in resampling skips, additive (not scale/shift) embedding injection
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        # Mapping network.
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder.
        self.enc = nn.ModuleDict()
        width = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(width, model_channels, kernel=3, **init)
                width = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(width, width, down=True, **block_kwargs)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(width, model_channels * mult,
                                                                attention=res in attn_resolutions, **block_kwargs)
                width = model_channels * mult
        skip_widths = [m.out_channels for m in self.enc.values()]

        # Decoder.
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(width, width, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(width, width, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(width, width, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin = width + skip_widths.pop()
                width = model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, width, attention=(idx == num_blocks and res in attn_resolutions), **block_kwargs)
            if level == 0:
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(width, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(width, out_channels, kernel=3, **init_zero)

    def embedding(self, noise_labels: torch.Tensor, class_labels=None, augment_labels=None) -> torch.Tensor:
        """The conditioning vector fed to every block, shape (B, emb_channels)."""
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos, sin] -> [sin, cos], as NVIDIA
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"a conditional SongUNet ({self.map_label.in_features} classes) needs class labels")
            labels = class_labels
            if self.training and self.label_dropout:  # classifier-free-guidance training: drop whole label vectors
                keep = torch.rand([labels.shape[0], 1], device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels=None,
                augment_labels=None) -> torch.Tensor:
        emb = self.embedding(noise_labels, class_labels, augment_labels)
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)
        out = None
        for name, module in self.dec.items():
            if name.endswith("aux_norm"):
                out = module(x)
            elif name.endswith("aux_conv"):
                out = module(F.silu(out))
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out


def cifar10_ddpmpp_kwargs(label_dim: int) -> dict:
    """SongUNet kwargs of EDM's CIFAR-10 vp checkpoints (edm-cifar10-32x32-{uncond,cond}-vp.pkl).

    EDM train.py, ``--arch=ddpmpp``: model_channels 128, channel_mult [2,2,2], augment_dim 9, positional
    embedding, standard encoder/decoder, [1,1] filter; ``--dropout=0.13`` for CIFAR-10 (EDM README); num_blocks 4,
    attn_resolutions [16], channel_mult_emb 4 are SongUNet defaults (docs/reference-code.md#nvidias-edm-checkpoints).
    """
    if label_dim not in (0, 10):
        raise ConfigError(f"CIFAR-10 networks have label_dim 0 (unconditional) or 10, not {label_dim}")
    return dict(img_resolution=32, in_channels=3, out_channels=3, label_dim=label_dim, augment_dim=9,
                model_channels=128, channel_mult=[2, 2, 2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16],
                dropout=0.13, label_dropout=0.0, embedding_type="positional", channel_mult_noise=1,
                encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
