"""EDM's non-leaking augmentation pipeline (Karras et al. 2022, Appendix F.2; NVlabs/edm ``training/augment.py``).

SiD and Diff-Instruct pass this pipeline, with p = 0.12 on CIFAR-10, into the online network's (D_psi's) EDM loss
(docs/reference-code.md#sids-fake-score-loss-and-augmentation): D_psi learns the score of augmented generated
images, and the per-sample augment labels go into SongUNet's ``map_augment`` (``sim_core/nets/songunet.py``,
augment_dim = 9). NVIDIA's CIFAR-10
checkpoints were trained with exactly these labels, so the layout, order and scaling below follow EDM's.

The behaviour follows NVIDIA's implementation (read, not copied):

* every random number is drawn from one caller-owned CPU ``torch.Generator`` in float32, in EDM's order (per
  transform: the value(s), then the gate), then moved to the images' device, so a run is reproducible and resumable
  bit for bit from the generator's state;
* pixel blitting (x-flip, y-flip, quarter turns, integer translation with mirror wrap) moves pixels exactly;
* the general geometric transforms (isotropic scale, fractional rotation, anisotropic scale, fractional
  translation) are composed into one 3x3 matrix ``G_inv`` per sample that maps an *output* pixel position to the
  *input* position it reads from (centred pixel coordinates, x to the right, y down). The batch is reflect-padded
  by a margin sized from where the four transformed output corners land, upsampled 2x with the symlet-6 low-pass
  filter, resampled bilinearly (``affine_grid`` / ``grid_sample``, zeros outside), low-passed with the same filter,
  decimated 2x and cropped back to H x W;
* the colour transforms (brightness, contrast, luma flip, hue rotation, saturation) are composed into one 4x4
  matrix per sample acting on homogeneous RGB and applied per pixel.

Two deliberate, documented differences from EDM, both at float-rounding level:

* EDM runs the resampling (and the colour product) whenever one of those transforms is *enabled*; here it is
  skipped when no sample of the batch actually *fired* one, so p = 0 returns the images bit for bit. When it runs,
  EDM's result for an un-transformed sample is the identity up to rounding (the symlet filter is orthonormal, so
  upsample-then-decimate reproduces the input: tests/test_augment.py checks 1e-5).
* matrices are built in float64 from the float32 draws (EDM: float32), and the resampling runs in the images'
  dtype promoted to at least float32; the result is cast back to the images' dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from sim_core.registry import Registry

# Decomposition low-pass filter of Daubechies' least-asymmetric wavelet "sym6" (12 taps; PyWavelets
# ``pywt.Wavelet('sym6').dec_lo``), the filter EDM's augment.py uses for up/downsampling (its ``wavelets['sym6']``).
# Orthonormal: sum = sqrt(2), sum_k h[k] h[k+2m] = delta_m; 6 vanishing moments (checked in tests/test_augment.py).
SYM6_LOWPASS = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)
# EDM augment.py: Hz_pad = len(Hz) // 4, the extra border (in input pixels) kept through the resampling, then cropped.
_FILTER_PAD = len(SYM6_LOWPASS) // 4
# Filter tap aligned with an input sample when upsampling, and with an output sample when decimating: EDM's conv
# padding (len+1)//2 on the zero-stuffed signal with the flipped taps, i.e. out[j] = sum_i h[j + 5 - 2i] x[i], and
# (len-1)//2 for the decimation, d[n] = sum_k h[k] y[2n + k - 5]. (The filter's group delay at DC is 5.1.)
_FILTER_ORIGIN = (len(SYM6_LOWPASS) - 1) // 2

_LUMA_AXIS = (1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3), 0.0)  # EDM augment.py: [1, 1, 1, 0] / sqrt(3)

# Constructor arguments, EDM's defaults (training/augment.py, AugmentPipe.__init__).
_PROB_MULTIPLIERS = ("xflip", "yflip", "rotate_int", "translate_int", "scale", "rotate_frac", "aniso",
                     "translate_frac", "brightness", "contrast", "lumaflip", "hue", "saturation")
_RANGES = dict(translate_int_max=0.125, scale_std=0.2, rotate_frac_max=1.0, aniso_std=0.2, aniso_rotate_prob=0.5,
               translate_frac_std=0.125, brightness_std=0.2, contrast_std=0.5, hue_max=1.0, saturation_std=1.0)
_GEOMETRIC = ("scale", "rotate_frac", "aniso", "translate_frac")
_COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
# Label entries per transform when enabled, in EDM's order.
_LABEL_WIDTH = dict(xflip=1, yflip=1, rotate_int=2, translate_int=2, scale=1, rotate_frac=2, aniso=2,
                    translate_frac=2, brightness=1, contrast=1, lumaflip=1, hue=2, saturation=1)


@dataclass
class AugmentParams:
    """Per-sample parameters drawn for one batch (CPU tensors); ``None`` for a transform that is disabled.

    A sample whose transform did not fire holds that transform's identity value (0), exactly as EDM's
    ``torch.where(gate, w, 0)``. Shapes: [N] unless noted. ``batch``, ``height`` and ``width`` are the image size
    the parameters were drawn for (integer translation and its labels depend on it).
    """
    batch: int
    height: int
    width: int
    xflip: Optional[torch.Tensor] = None           # int64 0/1: mirror left-right
    yflip: Optional[torch.Tensor] = None           # int64 0/1: mirror top-bottom
    rotate_int: Optional[torch.Tensor] = None      # int64 k in 0..3: torch.rot90(images, k, dims=(2, 3))
    translate_int: Optional[torch.Tensor] = None   # int64 [2, N]: (tx, ty) pixels, out[y, x] = in[y + ty, x - tx]
    scale: Optional[torch.Tensor] = None           # float32 w: the image is magnified by s = 2^(w * scale_std)
    rotate_frac: Optional[torch.Tensor] = None     # float32 theta (radians): G_inv gets [[cos, -sin], [sin, cos]]
    aniso: Optional[torch.Tensor] = None           # float32 [2, N]: (w, r): stretch 2^(w * aniso_std) along angle r
    translate_frac: Optional[torch.Tensor] = None  # float32 [2, N]: (wx, wy): shift (wx W, wy H) * translate_frac_std
    brightness: Optional[torch.Tensor] = None      # float32 w: add b = w * brightness_std to R, G, B
    contrast: Optional[torch.Tensor] = None        # float32 w: scale RGB by c = 2^(w * contrast_std)
    lumaflip: Optional[torch.Tensor] = None        # int64 0/1: reflect RGB through the plane orthogonal to luma
    hue: Optional[torch.Tensor] = None             # float32 theta (radians): rotate RGB about the luma axis
    saturation: Optional[torch.Tensor] = None      # float32 w: scale chroma by 2^(w * saturation_std)

    def __getitem__(self, part: slice) -> "AugmentParams":
        """The parameters of samples ``part`` (a data-parallel rank's shard, a micro-batch): the loop draws them for
        the global batch, so that the augmentation does not depend on how the batch is split."""
        if not isinstance(part, slice) or part.step not in (None, 1):
            raise ValueError(f"AugmentParams: only contiguous slices select samples, got {part!r}")
        start, stop, _ = part.indices(self.batch)
        out = {}
        for name in _PROB_MULTIPLIERS:
            value = getattr(self, name)
            out[name] = None if value is None else value[..., start:stop]  # [N] or [2, N]: samples on the last dim
        return AugmentParams(batch=max(stop - start, 0), height=self.height, width=self.width, **out)

    def fired(self, names) -> bool:
        """Whether any sample has a non-identity value for one of the named transforms."""
        for name in names:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "aniso":
                value = value[0]  # the angle r is drawn independently of p; with w = 0 the block is the identity
            if bool((value != 0).any()):
                return True
        return False


# ------------------------------------------------------------------------------------------------ matrix helpers
# Batched 3x3 (2-D homogeneous) and 4x4 (3-D homogeneous, colour) matrices in float64; 1-D tensors are per sample.

def _eye(n: int, batch: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64).expand(batch, n, n).clone()


def _affine2d(a11, a12, a21, a22, tx=0.0, ty=0.0, batch: int = 1) -> torch.Tensor:
    m = _eye(3, batch)
    for (i, j), v in {(0, 0): a11, (0, 1): a12, (1, 0): a21, (1, 1): a22, (0, 2): tx, (1, 2): ty}.items():
        m[:, i, j] = v
    return m


def _rotation2d(theta: torch.Tensor) -> torch.Tensor:
    """[[cos, -sin], [sin, cos]] (EDM augment.py rotate2d)."""
    c, s = theta.cos(), theta.sin()
    return _affine2d(c, -s, s, c, batch=theta.shape[0])


def _scaling2d(sx, sy, batch: int) -> torch.Tensor:
    return _affine2d(sx, 0.0, 0.0, sy, batch=batch)


def _shift2d(tx, ty, batch: int) -> torch.Tensor:
    return _affine2d(1.0, 0.0, 0.0, 1.0, tx, ty, batch=batch)


def _luma_outer() -> torch.Tensor:
    v = torch.tensor(_LUMA_AXIS, dtype=torch.float64)
    return torch.outer(v, v)


def _rotation_about_luma(theta: torch.Tensor) -> torch.Tensor:
    """Rodrigues rotation by theta about the unit axis v = [1, 1, 1] / sqrt(3) (EDM augment.py rotate3d)."""
    v = torch.tensor(_LUMA_AXIS[:3], dtype=torch.float64)
    cross = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64)
    c, s = theta.cos()[:, None, None], theta.sin()[:, None, None]
    m = _eye(4, theta.shape[0])
    m[:, :3, :3] = c * torch.eye(3, dtype=torch.float64) + s * cross + (1 - c) * torch.outer(v, v)
    return m


def _mirror_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Fold any integer index into [0, size) by mirroring about the edge pixels (no edge repeat), period 2*size-2."""
    period = 2 * size - 2
    return (size - 1) - ((size - 1) - torch.remainder(idx, period)).abs()


# ------------------------------------------------------------------------------------------------ the pipeline

class AugmentPipe:
    """EDM's AugmentPipe: same constructor arguments and defaults, same draws, operations and labels.

    Each transform fires for a sample with probability ``multiplier * p`` (a multiplier >= 1/p always fires,
    e.g. EDM's ``xflip=1e8``). ``__call__(images, generator)`` returns ``(images_aug, augment_labels)``.

    Label layout (``augment_labels``: [N, label_dim]); only *enabled* transforms (multiplier > 0) contribute
    entries, in this order, each 0 for a sample where the transform did not fire:

    ==============  =====  =======================================================================
    transform       width  entries
    ==============  =====  =======================================================================
    xflip           1      1 if mirrored left-right, else 0
    yflip           1      1 if mirrored top-bottom, else 0
    rotate_int      2      (k in {1, 2}, k in {2, 3}) for k quarter turns (torch.rot90 on dims 2, 3)
    translate_int   2      (tx / (W * translate_int_max), ty / (H * translate_int_max)), tx, ty in pixels
    scale           1      w, where the magnification is 2^(w * scale_std)
    rotate_frac     2      (cos(theta) - 1, sin(theta))
    aniso           2      (w cos(r), w sin(r)): stretch 2^(w * aniso_std) along direction r
    translate_frac  2      (wx, wy): shift (wx * W, wy * H) * translate_frac_std pixels
    brightness      1      w, offset w * brightness_std
    contrast        1      w, gain 2^(w * contrast_std)
    lumaflip        1      1 if flipped, else 0
    hue             2      (cos(theta) - 1, sin(theta))
    saturation      1      w, chroma gain 2^(w * saturation_std)
    ==============  =====  =======================================================================

    EDM's CIFAR-10 setting (:func:`cifar10_augment_pipe`) enables xflip, yflip, scale, rotate_frac, aniso and
    translate_frac: 1 + 1 + 1 + 2 + 2 + 2 = 9 entries, the ``augment_dim=9`` of the CIFAR-10 SongUNet.

    Labels come in the images' dtype promoted to at least float32 (EDM: always float32), so a float64 network can
    take them. Only 1- or 3-channel images can take colour transforms (as in EDM).
    """

    def __init__(self, p=1,
                 xflip=0, yflip=0, rotate_int=0, translate_int=0, translate_int_max=0.125,
                 scale=0, rotate_frac=0, aniso=0, translate_frac=0, scale_std=0.2, rotate_frac_max=1, aniso_std=0.2,
                 aniso_rotate_prob=0.5, translate_frac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5,
                 hue_max=1, saturation_std=1):
        given = dict(locals())
        for name in ("p", *_PROB_MULTIPLIERS, *_RANGES):
            setattr(self, name, _non_negative(name, given[name]))
        for name in ("p", "aniso_rotate_prob"):  # probabilities, compared with a uniform draw
            if getattr(self, name) > 1:
                raise ValueError(f"AugmentPipe: {name}={getattr(self, name)} is a probability; use a value in [0, 1]")
        if self.translate_int > 0 and self.translate_int_max == 0:  # its labels divide by W * translate_int_max
            raise ValueError("AugmentPipe: translate_int_max=0 with translate_int enabled; use a positive range")

    # ---- settings

    def enabled(self) -> list[str]:
        """Names of the enabled transforms, in EDM's order."""
        return [name for name in _PROB_MULTIPLIERS if getattr(self, name) > 0]

    @property
    def label_dim(self) -> int:
        """Number of augment-label entries per sample for these settings."""
        return sum(_LABEL_WIDTH[name] for name in self.enabled())

    def kwargs(self) -> dict:
        """Constructor arguments that rebuild this pipe."""
        return {name: getattr(self, name) for name in ("p", *_PROB_MULTIPLIERS, *_RANGES)}

    def __repr__(self) -> str:
        set_ = ", ".join(f"{k}={v:g}" for k, v in self.kwargs().items() if k == "p" or v != 0 and k not in _RANGES)
        return f"AugmentPipe({set_})"

    # ---- drawing

    def draw(self, batch: int, height: int, width: int, generator: torch.Generator) -> AugmentParams:
        """Draw every random number for a batch, on the CPU, in EDM's order (value(s), then the gate)."""
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise ValueError("AugmentPipe: generator must be a CPU torch.Generator (it is checkpointed for resume)")
        N, H, W, g = int(batch), int(height), int(width), generator

        def uniform(*shape):
            return torch.rand(shape, generator=g, dtype=torch.float32)

        def normal(*shape):
            return torch.randn(shape, generator=g, dtype=torch.float32)

        def coin(k):
            return torch.randint(k, (N,), generator=g, dtype=torch.int64)

        def gate(value, name, prob=None):
            prob = getattr(self, name) * self.p if prob is None else prob
            keep = uniform(N) < prob  # one uniform per sample, shared by both rows of a [2, N] value
            return torch.where(keep, value, torch.zeros_like(value))

        out = AugmentParams(batch=N, height=H, width=W)
        if self.xflip > 0:
            out.xflip = gate(coin(2), "xflip")
        if self.yflip > 0:
            out.yflip = gate(coin(2), "yflip")
        if self.rotate_int > 0:
            out.rotate_int = gate(coin(4), "rotate_int")
        if self.translate_int > 0:
            w = gate(uniform(2, N) * 2 - 1, "translate_int")
            # EDM: round(w * size * translate_int_max) pixels, rounding half to even as torch.round does.
            out.translate_int = torch.stack([(w[0] * (W * self.translate_int_max)).round(),
                                             (w[1] * (H * self.translate_int_max)).round()]).to(torch.int64)
        if self.scale > 0:
            out.scale = gate(normal(N), "scale")
        if self.rotate_frac > 0:
            out.rotate_frac = gate((uniform(N) * 2 - 1) * float(math.pi * self.rotate_frac_max), "rotate_frac")
        if self.aniso > 0:
            w = normal(N)
            r = (uniform(N) * 2 - 1) * float(math.pi)
            w = gate(w, "aniso")
            r = gate(r, "aniso", prob=self.aniso_rotate_prob)  # EDM: not scaled by p
            out.aniso = torch.stack([w, r])
        if self.translate_frac > 0:
            out.translate_frac = gate(normal(2, N), "translate_frac")
        if self.brightness > 0:
            out.brightness = gate(normal(N), "brightness")
        if self.contrast > 0:
            out.contrast = gate(normal(N), "contrast")
        if self.lumaflip > 0:
            out.lumaflip = gate(coin(2), "lumaflip")
        if self.hue > 0:
            out.hue = gate((uniform(N) * 2 - 1) * float(math.pi * self.hue_max), "hue")
        if self.saturation > 0:
            out.saturation = gate(normal(N), "saturation")
        return out

    # ---- labels and matrices

    def labels(self, params: AugmentParams) -> torch.Tensor:
        """[N, label_dim] float64 augment labels in EDM's layout (see the class docstring)."""
        cols = []
        for name in self.enabled():
            v = getattr(params, name).to(torch.float64)
            if name in ("xflip", "yflip", "lumaflip", "scale", "brightness", "contrast", "saturation"):
                cols += [v]
            elif name == "rotate_int":
                cols += [((v == 1) | (v == 2)).double(), ((v == 2) | (v == 3)).double()]
            elif name == "translate_int":
                cols += [v[0] / (params.width * self.translate_int_max),
                         v[1] / (params.height * self.translate_int_max)]
            elif name in ("rotate_frac", "hue"):
                cols += [v.cos() - 1, v.sin()]
            elif name == "aniso":
                cols += [v[0] * v[1].cos(), v[0] * v[1].sin()]
            elif name == "translate_frac":
                cols += [v[0], v[1]]
        if not cols:
            return torch.zeros(params.batch, 0, dtype=torch.float64)
        return torch.stack(cols, dim=1)

    def geometric_matrix(self, params: AugmentParams) -> torch.Tensor:
        """[N, 3, 3] float64 G_inv: output pixel position -> input position read, centred pixel coordinates.

        G_inv = S(1/s) R(theta) [R(-r) S(1/a, a) R(r)] T(-t), i.e. the image is scaled, then rotated, then stretched
        anisotropically, then translated (EDM's right-multiplication order).
        """
        N, height, width = params.batch, params.height, params.width
        G_inv = _eye(3, N)
        if params.scale is not None:
            s = torch.exp2(params.scale.double() * self.scale_std)
            G_inv = G_inv @ _scaling2d(1 / s, 1 / s, N)
        if params.rotate_frac is not None:
            G_inv = G_inv @ _rotation2d(params.rotate_frac.double())
        if params.aniso is not None:
            a = torch.exp2(params.aniso[0].double() * self.aniso_std)
            r = params.aniso[1].double()
            G_inv = G_inv @ _rotation2d(-r) @ _scaling2d(1 / a, a, N) @ _rotation2d(r)
        if params.translate_frac is not None:
            t = params.translate_frac.double() * self.translate_frac_std
            G_inv = G_inv @ _shift2d(-t[0] * width, -t[1] * height, N)
        return G_inv

    def color_matrix(self, params: AugmentParams) -> torch.Tensor:
        """[N, 4, 4] float64 M on homogeneous [R, G, B, 1]: saturation . hue . lumaflip . contrast . brightness."""
        N = params.batch
        M = _eye(4, N)
        I_4 = torch.eye(4, dtype=torch.float64)
        P = _luma_outer()  # projection onto the luma axis
        if params.brightness is not None:
            b = params.brightness.double() * self.brightness_std
            T = _eye(4, N)
            T[:, :3, 3] = b[:, None]
            M = T @ M
        if params.contrast is not None:
            c = torch.exp2(params.contrast.double() * self.contrast_std)
            C = _eye(4, N)
            C[:, 0, 0] = C[:, 1, 1] = C[:, 2, 2] = c
            M = C @ M
        if params.lumaflip is not None:
            M = (I_4 - 2 * P * params.lumaflip.double()[:, None, None]) @ M
        if params.hue is not None:
            M = _rotation_about_luma(params.hue.double()) @ M
        if params.saturation is not None:
            # EDM: P + (I - P) * gain; the homogeneous entry [3, 3] is scaled too, which leaves rows 0..2 unchanged.
            gain = torch.exp2(params.saturation.double() * self.saturation_std)[:, None, None]
            M = (P + (I_4 - P) * gain) @ M
        return M

    # ---- applying

    def __call__(self, images: torch.Tensor, generator: torch.Generator):
        self._check_images(images)
        N, _, H, W = images.shape
        return self.apply(images, self.draw(N, H, W, generator))

    def apply(self, images: torch.Tensor, params: AugmentParams):
        """Augment ``images`` with already drawn ``params``; returns (images_aug, augment_labels)."""
        self._check_images(images)
        N, C, H, W = images.shape
        drawn = [name for name in _PROB_MULTIPLIERS if getattr(params, name) is not None]
        if drawn != self.enabled():
            raise ValueError(f"AugmentPipe: parameters drawn for transforms {drawn}, this pipe has {self.enabled()}")
        if (params.batch, params.height, params.width) != (N, H, W):
            raise ValueError(f"AugmentPipe: parameters drawn for {params.batch} images of {params.height}x"
                             f"{params.width}, got {N} of {H}x{W}")
        device, out_dtype = images.device, images.dtype
        work = torch.promote_types(images.dtype, torch.float32)
        x = images

        def on(t):
            return t.to(device)

        # Pixel blitting: exact moves.
        if params.xflip is not None:
            x = torch.where(on(params.xflip.bool())[:, None, None, None], x.flip(3), x)
        if params.yflip is not None:
            x = torch.where(on(params.yflip.bool())[:, None, None, None], x.flip(2), x)
        if params.rotate_int is not None:
            k = on(params.rotate_int)[:, None, None, None]
            # k quarter turns counterclockwise = mirror left-right (k = 1, 2), mirror top-bottom (k = 2, 3), then
            # swap the axes (k = 1, 3).
            x = torch.where((k == 1) | (k == 2), x.flip(3), x)
            x = torch.where((k == 2) | (k == 3), x.flip(2), x)
            x = torch.where((k == 1) | (k == 3), x.transpose(2, 3), x)
        if params.translate_int is not None:
            tx, ty = on(params.translate_int[0]), on(params.translate_int[1])
            cols = _mirror_index(torch.arange(W, device=device)[None, :] - tx[:, None], W)  # [N, W]
            rows = _mirror_index(torch.arange(H, device=device)[None, :] + ty[:, None], H)  # [N, H] (EDM: +ty)
            n = torch.arange(N, device=device)[:, None, None, None]
            c = torch.arange(C, device=device)[None, :, None, None]
            x = x[n, c, rows[:, None, :, None], cols[:, None, None, :]]

        # General geometric transforms: resampling through the 2x-upsampled, reflect-padded batch.
        if params.fired(_GEOMETRIC):
            G_inv = self.geometric_matrix(params)
            x = resample(x.to(work), G_inv).to(out_dtype)

        # Colour transforms.
        if params.fired(_COLOUR):
            M = on(self.color_matrix(params).to(work))
            flat = x.to(work).reshape(N, C, H * W)
            if C == 3:
                flat = M[:, :3, :3] @ flat + M[:, :3, 3:]
            else:  # C == 1 (checked): EDM averages the three output rows and sums their RGB weights
                m = M[:, :3, :].mean(dim=1, keepdim=True)
                flat = flat * m[:, :, :3].sum(dim=2, keepdim=True) + m[:, :, 3:]
            x = flat.reshape(N, C, H, W).to(out_dtype)

        labels = self.labels(params).to(device=device, dtype=work)
        return x, labels

    # ---- checks

    def _check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"AugmentPipe: images must be a tensor [N, C, H, W], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"AugmentPipe: images must be floating point, got {images.dtype}")
        _, C, H, W = images.shape
        on = set(self.enabled())
        if on & set(_COLOUR) and C not in (1, 3):
            raise ValueError(f"AugmentPipe: colour transforms need 1 or 3 channels, got C={C}")
        if on & {"rotate_int", "translate_int", *_GEOMETRIC} and min(H, W) < 2:
            raise ValueError(f"AugmentPipe: geometric transforms need images of at least 2x2, got {H}x{W}")
        if "rotate_int" in on and H != W:
            raise ValueError(f"AugmentPipe: rotate_int needs square images, got {H}x{W}")


def _non_negative(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"AugmentPipe: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"AugmentPipe: {name}={value!r} must be finite and >= 0")
    return v


# ------------------------------------------------------------------------------------------------ resampling

def _fir_taps(dtype, device, channels: int, axis: int) -> torch.Tensor:
    """Depthwise conv weights holding the symlet-6 taps along ``axis`` (2 = rows, 3 = columns)."""
    h = torch.tensor(SYM6_LOWPASS, dtype=dtype, device=device)
    shape = (channels, 1, len(h), 1) if axis == 2 else (channels, 1, 1, len(h))
    return h.reshape(1, 1, -1).expand(channels, 1, -1).reshape(shape)


def _upsample2x(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Zero-stuff by 2 along ``axis`` and low-pass with the symlet taps: out[j] = sum_i h[j + 5 - 2i] x[i].

    A transposed convolution with stride 2 is exactly that sum; the length becomes 2L.
    """
    C = x.shape[1]
    stride = (2, 1) if axis == 2 else (1, 2)
    pad = (_FILTER_ORIGIN, 0) if axis == 2 else (0, _FILTER_ORIGIN)
    return F.conv_transpose2d(x, _fir_taps(x.dtype, x.device, C, axis), stride=stride, padding=pad, groups=C)


def _decimate2x(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Low-pass with the symlet taps and keep every second sample: out[n] = sum_k h[k] y[2n + k - 5]."""
    C = x.shape[1]
    stride = (2, 1) if axis == 2 else (1, 2)
    pad = (_FILTER_ORIGIN, 0) if axis == 2 else (0, _FILTER_ORIGIN)
    return F.conv2d(x, _fir_taps(x.dtype, x.device, C, axis), stride=stride, padding=pad, groups=C)


def resample(x: torch.Tensor, G_inv: torch.Tensor) -> torch.Tensor:
    """Apply the per-sample output->input maps ``G_inv`` ([N, 3, 3] float64, centred pixel coordinates) to x.

    EDM's execution of the geometric transforms; with identity matrices it returns x up to float rounding.
    """
    N, C, H, W = x.shape
    if tuple(G_inv.shape) != (N, 3, 3):
        raise ValueError(f"resample: G_inv must have shape ({N}, 3, 3), got {tuple(G_inv.shape)}")
    G_inv = G_inv.to(device="cpu", dtype=torch.float64)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    # Where the four output corners read from; the batch is padded so that those points, plus twice the filter
    # border, fall inside the padded image (each side at most size - 1, the most 'reflect' padding allows).
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=torch.float64)
    src = G_inv @ corners.t()  # [N, 3, 4]
    xs, ys = src[:, 0, :], src[:, 1, :]
    extra = 2 * _FILTER_PAD  # EDM augment.py: margin + Hz_pad * 2
    pads = [(-xs).max() - cx + extra, (-ys).max() - cy + extra, xs.max() - cx + extra, ys.max() - cy + extra]
    limits = [W - 1, H - 1, W - 1, H - 1]
    left, top, right, bottom = (int(math.ceil(min(max(float(m), 0.0), lim))) for m, lim in zip(pads, limits))
    x = F.pad(x, [left, right, top, bottom], mode="reflect")
    Hp, Wp = x.shape[2], x.shape[3]

    # 2x upsampling: upsampled index j holds padded position j / 2.
    x = _upsample2x(_upsample2x(x, axis=3), axis=2)

    # Output grid: 2x the size of the image plus the filter border; output sample q sits at centred position
    # q / 2 - (size + 2 * pad - 1) / 2 (so that decimating and cropping pad samples lands on the pixel centres).
    Ho, Wo = 2 * (H + 2 * _FILTER_PAD), 2 * (W + 2 * _FILTER_PAD)
    # theta maps the output grid's normalised coordinates (align_corners=False) to the input's, composed as
    # normalised out -> out index q -> centred output position -> (G_inv) centred input position -> padded index
    # -> upsampled index 2 * padded -> normalised in.
    out_from_norm = _affine2d(Wo / 2, 0.0, 0.0, Ho / 2, (Wo - 1) / 2, (Ho - 1) / 2)
    centred_from_q = _affine2d(0.5, 0.0, 0.0, 0.5, -(W + 2 * _FILTER_PAD - 1) / 2, -(H + 2 * _FILTER_PAD - 1) / 2)
    padded_from_centred = _shift2d(cx + left, cy + top, 1)
    up_from_padded = _scaling2d(2.0, 2.0, 1)
    norm_from_up = _affine2d(2 / (2 * Wp), 0.0, 0.0, 2 / (2 * Hp), 1 / (2 * Wp) - 1, 1 / (2 * Hp) - 1)
    theta = norm_from_up @ up_from_padded @ padded_from_centred @ G_inv @ centred_from_q @ out_from_norm
    grid = F.affine_grid(theta[:, :2, :].to(dtype=x.dtype, device=x.device), [N, C, Ho, Wo], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Low-pass, decimate 2x, and drop the filter border.
    x = _decimate2x(_decimate2x(x, axis=3), axis=2)
    return x[:, :, _FILTER_PAD:_FILTER_PAD + H, _FILTER_PAD:_FILTER_PAD + W]


# ------------------------------------------------------------------------------------------------ settings by name

def cifar10_augment_pipe(p: float = 0.12) -> AugmentPipe:
    """EDM's CIFAR-10 setting (NVlabs/edm train.py: ``AugmentPipe(p=--augment, xflip=1e8, yflip=1, scale=1,
    rotate_frac=1, aniso=1, translate_frac=1)``, ``--augment`` 0.12 by default, network ``augment_dim=9``).

    ``xflip=1e8`` makes the x-flip coin fire for every sample whenever p > 0 (half of them flip); the other five
    transforms fire with probability p each. 9 label entries.
    """
    return AugmentPipe(p=p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)


AUGMENT_PIPES = Registry("augment pipe")
AUGMENT_PIPES.register("edm_cifar10", cifar10_augment_pipe)
