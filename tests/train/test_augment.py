"""EDM's AugmentPipe (sim_core/train/augment.py): exact pixel moves, the geometric resampling against an analytic image
and against an independent dense-matrix reference, colour matrices against closed forms, EDM's label layout, draw
statistics, determinism, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sim_core.registry import UnknownNameError
from sim_core.train.augment import (
    AUGMENT_PIPES,
    SYM6_LOWPASS,
    AugmentParams,
    AugmentPipe,
    cifar10_augment_pipe,
    resample,
)

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(n=8, c=3, h=16, w=16, seed=0, dtype=torch.float64):
    return torch.randn(n, c, h, w, generator=gen(seed), dtype=dtype)


def centred_grid(h: int, w: int):
    """Centred pixel coordinates (X to the right, Y down), float64 [h, w] each."""
    y = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    x = torch.arange(w, dtype=torch.float64) - (w - 1) / 2
    return torch.meshgrid(x, y, indexing="xy")


# ------------------------------------------------------------------------------------------------ the filter

def test_sym6_lowpass_is_an_orthonormal_wavelet_filter_with_six_vanishing_moments():
    h = np.array(SYM6_LOWPASS)
    assert len(h) == 12
    assert abs(h.sum() - math.sqrt(2)) < 1e-12
    for m in range(6):  # sum_k h[k] h[k + 2m] = delta_m
        assert abs(np.dot(h[:12 - 2 * m], h[2 * m:]) - (m == 0)) < 1e-11
    k = np.arange(12)
    g = (-1.0) ** k * h  # high-pass partner up to sign and order: its first 6 moments vanish for sym6
    for p in range(6):
        assert abs((g * k ** p).sum()) < 1e-8 * 12 ** p
    assert abs((g * k ** 6).sum()) > 100  # ... and no more (a 7th vanishing moment would mean a longer wavelet)


# ------------------------------------------------------------------------------------------------ p = 0 and layout

def test_cifar10_setting_p0_is_bitwise_identity_with_zero_labels():
    pipe = cifar10_augment_pipe(p=0.0)
    assert pipe.label_dim == 9
    assert pipe.enabled() == ["xflip", "yflip", "scale", "rotate_frac", "aniso", "translate_frac"]
    for dtype in (torch.float32, torch.float64):
        x = rand_images(dtype=dtype)
        y, labels = pipe(x, gen(1))
        assert torch.equal(y, x) and y.dtype == dtype
        assert labels.shape == (8, 9) and labels.dtype == dtype and not labels.any()
    assert cifar10_augment_pipe().p == 0.12 and AugmentPipe().label_dim == 0


def test_cifar10_labels_follow_edms_layout_and_the_drawn_parameters():
    pipe = cifar10_augment_pipe(p=1.0)
    x = rand_images(n=32)
    params = pipe.draw(32, 16, 16, gen(3))
    y, labels = pipe.apply(x, params)
    assert labels.shape == (32, 9)
    w_scale, theta = params.scale.double(), params.rotate_frac.double()
    w_aniso, r = params.aniso.double()
    expected = torch.stack([params.xflip.double(), params.yflip.double(), w_scale, theta.cos() - 1, theta.sin(),
                            w_aniso * r.cos(), w_aniso * r.sin(), params.translate_frac[0].double(),
                            params.translate_frac[1].double()], dim=1)
    assert torch.allclose(labels, expected, rtol=0, atol=1e-12)
    # p = 1: every transform fired; the angles span the full circle (rotate_frac_max = 1), r fires half the time
    assert (params.scale != 0).all() and (params.rotate_frac != 0).all() and (params.translate_frac != 0).all()
    assert theta.abs().max() > 2.0 and theta.abs().max() <= math.pi
    assert 4 <= int((params.aniso[1] != 0).sum()) <= 28
    assert set(params.xflip.tolist()) == {0, 1}
    assert not torch.allclose(y, x, atol=1e-2)


# ------------------------------------------------------------------------------------------------ pixel blitting

@pytest.mark.parametrize("name,dim", [("xflip", 3), ("yflip", 2)])
def test_flips_are_exact_and_labelled(name, dim):
    pipe = AugmentPipe(p=1, **{name: 1e8})
    x = rand_images(n=16, h=8, w=12)
    params = pipe.draw(16, 8, 12, gen(5))
    y, labels = pipe.apply(x, params)
    flipped = getattr(params, name).bool()
    assert 3 <= int(flipped.sum()) <= 13 and pipe.label_dim == 1
    assert torch.equal(y[flipped], x[flipped].flip(dim))
    assert torch.equal(y[~flipped], x[~flipped])
    assert torch.equal(labels[:, 0], flipped.double())


def test_integer_rotation_matches_rot90_exactly():
    pipe = AugmentPipe(p=1, rotate_int=1)
    x = rand_images(n=32, h=8, w=8)
    params = pipe.draw(32, 8, 8, gen(6))
    y, labels = pipe.apply(x, params)
    k = params.rotate_int
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(32):
        assert torch.equal(y[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    assert torch.equal(labels, torch.stack([(k == 1) | (k == 2), (k == 2) | (k == 3)], 1).double())


def test_integer_translation_matches_a_reflect_padded_shift_exactly():
    pipe = AugmentPipe(p=1, translate_int=1, translate_int_max=0.5)
    N, H, W = 24, 12, 16
    x = rand_images(n=N, h=H, w=W)
    params = pipe.draw(N, H, W, gen(7))
    y, labels = pipe.apply(x, params)
    tx, ty = params.translate_int
    assert tx.abs().max() <= W // 2 and ty.abs().max() <= H // 2 and tx.abs().max() >= 5 and ty.abs().max() >= 4
    # independent reference: reflect-pad by the largest shift, then slice. EDM reads column x - tx and row y + ty.
    pad = torch.nn.functional.pad(x, [W // 2, W // 2, H // 2, H // 2], mode="reflect")
    for i in range(N):
        r0, c0 = H // 2 + int(ty[i]), W // 2 - int(tx[i])
        assert torch.equal(y[i], pad[i, :, r0:r0 + H, c0:c0 + W])
    assert torch.equal(labels, torch.stack([tx.double() / (W * 0.5), ty.double() / (H * 0.5)], 1))
    assert labels.abs().max() <= 1


# ------------------------------------------------------------------------------------------------ geometric transforms

def documented_G_inv(params: AugmentParams, std=dict(scale=0.2, aniso=0.2, translate=0.125)) -> torch.Tensor:
    """G_inv from the drawn parameters, written out here: S(1/s) R(theta) R(-r) S(1/a, a) R(r) T(-t)."""
    N, H, W = params.batch, params.height, params.width

    def m(a11, a12, a21, a22, tx=None, ty=None):
        z, o = torch.zeros(N, dtype=torch.float64), torch.ones(N, dtype=torch.float64)
        tx, ty = (z if tx is None else tx), (z if ty is None else ty)
        return torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1),
                            torch.stack([z, z, o], 1)], 1)

    def rot(t):
        return m(t.cos(), -t.sin(), t.sin(), t.cos())

    zero = torch.zeros(N, dtype=torch.float64)
    s = 2 ** (params.scale.double() * std["scale"])
    a, r = 2 ** (params.aniso[0].double() * std["aniso"]), params.aniso[1].double()
    t = params.translate_frac.double() * std["translate"]
    shift = m(zero + 1, zero, zero, zero + 1, -t[0] * W, -t[1] * H)
    return m(1 / s, zero, zero, 1 / s) @ rot(params.rotate_frac.double()) @ rot(-r) @ m(1 / a, zero, zero, a) @ rot(
        r) @ shift


def test_geometric_matrices_are_the_documented_maps():
    N = 12
    for name in ("scale", "rotate_frac", "aniso", "translate_frac"):
        pipe = AugmentPipe(p=1, **{name: 1})
        params = pipe.draw(N, 10, 14, gen(8))
        G = pipe.geometric_matrix(params)
        assert torch.equal(G[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(N, 3))
        A, t = G[:, :2, :2], G[:, :2, 2]
        if name == "scale":  # magnify by s: the output reads the input at p / s
            s = 2 ** (params.scale.double() * 0.2)
            assert torch.allclose(A, torch.diag_embed(torch.stack([1 / s, 1 / s], 1)), atol=1e-15)
            assert not t.any()
        elif name == "rotate_frac":
            th = params.rotate_frac.double()
            R = torch.stack([torch.stack([th.cos(), -th.sin()], 1), torch.stack([th.sin(), th.cos()], 1)], 1)
            assert torch.allclose(A, R, atol=1e-15) and not t.any()
        elif name == "aniso":  # stretch by a along (sin r, cos r) and 1/a along (cos r, -sin r); area kept
            a, r = 2 ** (params.aniso[0].double() * 0.2), params.aniso[1].double()
            u, v = torch.stack([r.cos(), -r.sin()], 1), torch.stack([r.sin(), r.cos()], 1)
            assert torch.allclose((A @ u[:, :, None])[..., 0], u / a[:, None], atol=1e-14)
            assert torch.allclose((A @ v[:, :, None])[..., 0], v * a[:, None], atol=1e-14)
            assert torch.allclose(torch.linalg.det(A), torch.ones(N, dtype=torch.float64), atol=1e-14)
        else:  # shift the image by (wx W, wy H) * 0.125: the output reads the input at p - shift
            w = params.translate_frac.double()
            assert torch.equal(A, torch.eye(2, dtype=torch.float64).expand(N, 2, 2))
            assert torch.allclose(t, -torch.stack([w[0] * 14 * 0.125, w[1] * 10 * 0.125], 1), atol=1e-14)
    # all four: scale, then rotate, then stretch, then translate (EDM right-multiplies G_inv in that order)
    pipe = AugmentPipe(p=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    params = pipe.draw(N, 10, 14, gen(9))
    assert torch.allclose(pipe.geometric_matrix(params), documented_G_inv(params), atol=1e-13)


def _sinusoid(X, Y, period):
    return torch.stack([torch.sin(2 * math.pi * (X / period + Y / (1.3 * period)) + phase) for phase in (0, 1, 2)],
                       dim=-3)


def test_fractional_geometric_transforms_resample_an_analytic_image():
    """A low-frequency sinusoid transformed by all four fractional transforms at once (p = 1) equals the sinusoid
    read at G_inv(p), away from the borders. The composition order scale -> rotate -> aniso -> translate matters
    (translation does not commute with the rest), so a wrong order or sign fails.

    EDM's symlet filter has a group delay of 5.098 taps where the code aligns tap 5: the upsampled image sits
    delta = 0.098 / 2 input pixels off, and the decimation reads delta off the other way. They cancel for the
    identity; in general the output at p reads G_inv(p + delta) - delta (delta on both axes). Modelled here,
    the residual is the interpolation error, < 0.01 for period 20 px (without delta it would be ~0.05)."""
    N, H, W, period = 16, 32, 32, 20.0
    pipe = AugmentPipe(p=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    params = pipe.draw(N, H, W, gen(3))
    X, Y = centred_grid(H, W)
    y, _ = pipe.apply(_sinusoid(X, Y, period).expand(N, 3, H, W).contiguous(), params)

    h = torch.tensor(SYM6_LOWPASS, dtype=torch.float64)
    delta = float(((h * torch.arange(12)).sum() / h.sum() - 5) / 2)
    assert abs(delta - 0.0491) < 1e-3
    G = documented_G_inv(params)[:, :, :, None, None]  # written out in the test, not taken from the pipe
    Xs = G[:, 0, 0] * (X + delta) + G[:, 0, 1] * (Y + delta) + G[:, 0, 2] - delta
    Ys = G[:, 1, 0] * (X + delta) + G[:, 1, 1] * (Y + delta) + G[:, 1, 2] - delta
    expected = _sinusoid(Xs, Ys, period)
    inside = ((Xs.abs() < (W - 1) / 2 - 4) & (Ys.abs() < (H - 1) / 2 - 4))[:, None].expand_as(expected)
    assert inside.float().mean() > 0.3
    err = (y - expected)[inside].abs()
    assert err.max() < 0.01 and err.mean() < 0.003
    # reading through the transposed linear part instead (rotations turned the other way) misses by O(1)
    Xw = G[:, 0, 0] * X + G[:, 1, 0] * Y + G[:, 0, 2]
    Yw = G[:, 0, 1] * X + G[:, 1, 1] * Y + G[:, 1, 2]
    assert (y - _sinusoid(Xw, Yw, period))[inside].abs().max() > 0.5


def _dense_upsample(length: int, h: np.ndarray) -> np.ndarray:
    """U[j, i] = h[j + 5 - 2i]: zero-stuffing then filtering with the taps (2L x L)."""
    U = np.zeros((2 * length, length))
    for j in range(2 * length):
        for i in range(length):
            if 0 <= j + 5 - 2 * i < len(h):
                U[j, i] = h[j + 5 - 2 * i]
    return U


def _dense_decimate(length: int, h: np.ndarray) -> np.ndarray:
    """D[n, q] = h[q - 2n + 5]: filtering then keeping every second sample (L/2 x L)."""
    D = np.zeros((length // 2, length))
    for n in range(length // 2):
        for q in range(length):
            if 0 <= q - 2 * n + 5 < len(h):
                D[n, q] = h[q - 2 * n + 5]
    return D


def _bilinear_zeros(img: np.ndarray, jx: np.ndarray, jy: np.ndarray) -> np.ndarray:
    """img [C, Hi, Wi] read at fractional pixel indices (jx, jy); neighbours outside count as 0."""
    C, Hi, Wi = img.shape
    x0, y0 = np.floor(jx).astype(int), np.floor(jy).astype(int)
    out = np.zeros((C,) + jx.shape)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - np.abs(jx - xi)) * (1 - np.abs(jy - yi))
            ok = (xi >= 0) & (xi < Wi) & (yi >= 0) & (yi < Hi)
            out += np.where(ok, img[:, np.clip(yi, 0, Hi - 1), np.clip(xi, 0, Wi - 1)], 0.0) * wgt
    return out


def reference_resample(x: np.ndarray, G: np.ndarray) -> np.ndarray:
    """EDM's geometric execution written with explicit matrices and coordinates (float64, numpy)."""
    N, C, H, W = x.shape
    h = np.array(SYM6_LOWPASS)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    corners = np.array([[-cx, -cy], [cx, -cy], [cx, cy], [-cx, cy]]).T
    src = G[:, :2, :2] @ corners + G[:, :2, 2:]
    margin = [(-src[:, 0]).max() - cx, (-src[:, 1]).max() - cy, src[:, 0].max() - cx, src[:, 1].max() - cy]
    left, top, right, bottom = (int(np.ceil(np.clip(m + 6, 0, lim))) for m, lim in zip(margin, [W - 1, H - 1] * 2))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
    Hp, Wp = xp.shape[2:]
    up = _dense_upsample(Hp, h) @ xp @ _dense_upsample(Wp, h).T  # upsampled index j holds padded position j / 2
    Ho, Wo = 2 * (H + 6), 2 * (W + 6)
    qy, qx = np.meshgrid(np.arange(Ho), np.arange(Wo), indexing="ij")
    ux, uy = qx / 2 - (W + 5) / 2, qy / 2 - (H + 5) / 2  # centred output position of output-grid sample q
    out = np.empty((N, C, Ho, Wo))
    for n in range(N):
        sx = G[n, 0, 0] * ux + G[n, 0, 1] * uy + G[n, 0, 2]
        sy = G[n, 1, 0] * ux + G[n, 1, 1] * uy + G[n, 1, 2]
        out[n] = _bilinear_zeros(up[n], 2 * (sx + cx + left), 2 * (sy + cy + top))
    down = _dense_decimate(Ho, h) @ out @ _dense_decimate(Wo, h).T
    return down[:, :, 3:3 + H, 3:3 + W]


def test_resampling_matches_an_explicit_matrix_reference_including_borders():
    """Random (not smooth) images and large transforms, so the reflect padding, its size, the zero region beyond
    it, the filter orientation and the crop all show; float64 agreement to 1e-10."""
    pipe = AugmentPipe(p=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1, scale_std=0.5, translate_frac_std=0.3)
    N, H, W = 4, 9, 12
    x = rand_images(n=N, h=H, w=W, seed=11)
    params = pipe.draw(N, H, W, gen(12))
    y, _ = pipe.apply(x, params)
    G = pipe.geometric_matrix(params)
    ref = reference_resample(x.numpy(), G.numpy())
    assert np.abs(y.numpy() - ref).max() < 1e-10
    assert np.abs(ref - x.numpy()).max() > 1.0  # the transforms are large


def test_resampling_with_identity_matrices_returns_the_input():
    x = rand_images(n=3, h=10, w=7, seed=2)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    assert (resample(x, eye) - x).abs().max() < 1e-10
    assert (resample(x.float(), eye) - x.float()).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"G_inv must have shape \(3, 3, 3\)"):
        resample(x, eye[:2])


# ------------------------------------------------------------------------------------------------ colour

def constant_image(rgb, n, h=4, w=5, dtype=torch.float64):
    return torch.tensor(rgb, dtype=dtype)[None, :, None, None].expand(n, len(rgb), h, w).contiguous()


def test_brightness_is_added_before_contrast_scales():
    pipe = AugmentPipe(p=1, brightness=1, contrast=1)
    N = 10
    params = pipe.draw(N, 4, 5, gen(20))
    rgb = [0.3, -0.6, 0.9]
    y, labels = pipe.apply(constant_image(rgb, N), params)
    b = params.brightness.double() * 0.2
    c = 2 ** (params.contrast.double() * 0.5)
    expected = c[:, None] * (torch.tensor(rgb, dtype=torch.float64)[None] + b[:, None])  # c (x + b), not c x + b
    assert torch.allclose(y[:, :, 2, 3], expected, atol=1e-12)
    assert (y == y[:, :, :1, :1]).all()  # still constant
    assert torch.equal(labels, torch.stack([params.brightness, params.contrast], 1).double())
    # one channel: EDM averages the colour matrix's rows, which for these two is the same affine map
    y1, _ = pipe.apply(constant_image([0.3], N), params)
    assert torch.allclose(y1[:, 0, 0, 0], c * (0.3 + b), atol=1e-12)


def test_lumaflip_negates_grey_and_keeps_zero_luma_colours():
    pipe = AugmentPipe(p=1, lumaflip=1)
    N = 16
    params = pipe.draw(N, 4, 5, gen(21))
    flip = params.lumaflip.bool()
    assert 3 <= int(flip.sum()) <= 13
    grey, _ = pipe.apply(constant_image([0.4, 0.4, 0.4], N), params)
    assert torch.allclose(grey[flip], torch.full_like(grey[flip], -0.4), atol=1e-12)
    assert torch.equal(grey[~flip], torch.full_like(grey[~flip], 0.4))
    chroma, labels = pipe.apply(constant_image([0.5, -0.2, -0.3], N), params)  # R + G + B = 0: on the mirror plane
    assert torch.allclose(chroma, constant_image([0.5, -0.2, -0.3], N), atol=1e-12)
    mixed, _ = pipe.apply(constant_image([0.7, 0.1, 0.1], N), params)  # grey 0.3 + chroma (0.4, -0.2, -0.2)
    assert torch.allclose(mixed[flip][:, :, 0, 0], torch.tensor([[0.1, -0.5, -0.5]], dtype=torch.float64),
                          atol=1e-12)
    assert torch.equal(labels[:, 0], flip.double())
    one, _ = pipe.apply(constant_image([0.4], N), params)
    assert torch.allclose(one[flip], torch.full_like(one[flip], -0.4), atol=1e-12)


def test_hue_rotates_about_the_grey_axis_and_saturation_scales_chroma():
    N = 12
    hue = AugmentPipe(p=1, hue=1)
    params = hue.draw(N, 4, 5, gen(22))
    th = params.hue.double()
    assert torch.allclose(hue.apply(constant_image([0.25] * 3, N), params)[0], constant_image([0.25] * 3, N),
                          atol=1e-12)
    x = torch.tensor([0.8, -0.1, 0.3], dtype=torch.float64)
    y, labels = hue.apply(constant_image(x.tolist(), N), params)
    v = torch.ones(3, dtype=torch.float64) / math.sqrt(3)
    rodrigues = (x[None] * th.cos()[:, None] + torch.linalg.cross(v.expand(N, 3), x.expand(N, 3)) * th.sin()[:, None]
                 + v[None] * (v @ x) * (1 - th.cos())[:, None])
    assert torch.allclose(y[:, :, 1, 1], rodrigues, atol=1e-12)
    assert torch.allclose(labels, torch.stack([th.cos() - 1, th.sin()], 1), atol=1e-12)
    assert th.abs().max() > 1.5  # hue_max = 1: the full circle

    sat = AugmentPipe(p=1, saturation=1)
    params = sat.draw(N, 4, 5, gen(23))
    gain = 2 ** params.saturation.double()
    y, labels = sat.apply(constant_image(x.tolist(), N), params)
    grey = x.mean()
    assert torch.allclose(y[:, :, 0, 0], grey + (x[None] - grey) * gain[:, None], atol=1e-12)
    assert torch.equal(labels[:, 0], params.saturation.double())


def test_colour_transforms_compose_in_edms_order():
    """All five on random pixels: saturation(hue(lumaflip(contrast(brightness(x))))), each step in closed form."""
    pipe = AugmentPipe(p=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    N, H, W = 6, 3, 4
    x = rand_images(n=N, h=H, w=W, seed=24)
    params = pipe.draw(N, H, W, gen(25))
    y, labels = pipe.apply(x, params)
    v = (torch.ones(3, dtype=torch.float64) / math.sqrt(3))[None, :, None, None]

    def per(t):
        return t.double()[:, None, None, None]

    z = x + per(params.brightness) * 0.2
    z = z * 2 ** (per(params.contrast) * 0.5)
    luma = (z * v).sum(1, keepdim=True) * v
    z = torch.where(per(params.lumaflip) == 1, z - 2 * luma, z)
    th = per(params.hue)
    z = z * th.cos() + torch.linalg.cross(v.expand_as(z), z, dim=1) * th.sin() + (z * v).sum(1, keepdim=True) * v * (
        1 - th.cos())
    luma = (z * v).sum(1, keepdim=True) * v
    z = luma + (z - luma) * 2 ** per(params.saturation)
    assert torch.allclose(y, z, atol=1e-12)
    assert labels.shape == (N, 6) and pipe.label_dim == 6


# ------------------------------------------------------------------------------------------------ randomness

def test_same_seed_same_result_other_seed_differs_float32_close_to_float64():
    pipe = cifar10_augment_pipe(p=0.5)
    x = rand_images(n=16, seed=30)
    a = pipe(x, gen(31))
    b = pipe(x, gen(31))
    c = pipe(x, gen(32))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1]) and not torch.allclose(a[0], c[0])
    y32, l32 = pipe(x.float(), gen(31))
    assert y32.dtype == l32.dtype == torch.float32
    assert (y32.double() - a[0]).abs().max() < 1e-4 and (l32.double() - a[1]).abs().max() < 1e-6
    y16, l16 = pipe(x.half(), gen(31))  # half precision in and out; computed in float32, labels float32
    assert y16.dtype == torch.float16 and l16.dtype == torch.float32 and (y16.double() - a[0]).abs().max() < 1e-2
    # resume: a generator restored from a saved state continues with the same batch
    g = gen(33)
    pipe(x, g)
    state = g.get_state()
    after = pipe(x, g)
    g2 = torch.Generator()
    g2.set_state(state)
    again = pipe(x, g2)
    assert torch.equal(after[0], again[0]) and torch.equal(after[1], again[1])


def test_draws_consume_the_generator_in_edms_order():
    """EDM's CIFAR-10 setting, N samples: per transform the value(s), then one uniform gate per sample."""
    N, p = 7, 0.6
    g = gen(60)
    flip_x = torch.randint(2, (N,), generator=g)
    flip_x = torch.where(torch.rand(N, generator=g) < 1e8 * p, flip_x, 0)
    flip_y = torch.randint(2, (N,), generator=g)
    flip_y = torch.where(torch.rand(N, generator=g) < p, flip_y, 0)
    w_s = torch.randn(N, generator=g)
    w_s = torch.where(torch.rand(N, generator=g) < p, w_s, 0)
    th = (torch.rand(N, generator=g) * 2 - 1) * math.pi
    th = torch.where(torch.rand(N, generator=g) < p, th, 0)
    w_a, r = torch.randn(N, generator=g), (torch.rand(N, generator=g) * 2 - 1) * math.pi
    w_a = torch.where(torch.rand(N, generator=g) < p, w_a, 0)
    r = torch.where(torch.rand(N, generator=g) < 0.5, r, 0)
    w_t = torch.randn(2, N, generator=g)
    w_t = torch.where(torch.rand(N, generator=g) < p, w_t, 0)
    params = cifar10_augment_pipe(p).draw(N, 8, 8, gen(60))
    for got, want in [(params.xflip, flip_x), (params.yflip, flip_y), (params.scale, w_s), (params.rotate_frac, th),
                      (params.aniso, torch.stack([w_a, r])), (params.translate_frac, w_t)]:
        assert torch.equal(got, want)


def test_each_transform_fires_with_its_probability():
    """p = 0.5, all thirteen transforms enabled, 2000 tiny images: the share of samples whose label entries are
    nonzero is within 4 standard errors of the probability implied by EDM's gates."""
    N, p = 2000, 0.5
    pipe = AugmentPipe(p=p, xflip=1, yflip=1, rotate_int=1, translate_int=1, translate_int_max=0.5, scale=1,
                       rotate_frac=1, aniso=1, translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1,
                       saturation=1)
    assert pipe.label_dim == 19
    _, labels = pipe(torch.rand(N, 3, 4, 4, generator=gen(40)), gen(41))
    nz = labels != 0
    # label column -> probability that the entry is nonzero (columns 4, 5: translate_int, checked jointly below)
    expected = {0: p / 2, 1: p / 2,            # xflip, yflip: a coin when fired
                2: p / 2, 3: p / 2,            # rotate_int: k in {1, 2}; k in {2, 3} (2 of 4 each)
                6: p,                          # scale w
                7: p, 8: p,                    # rotate_frac (cos - 1, sin)
                9: p, 10: p / 2,               # aniso (w cos r, w sin r): r is nonzero with aniso_rotate_prob 1/2
                11: p, 12: p,                  # translate_frac
                13: p, 14: p,                  # brightness, contrast
                15: p / 2,                     # lumaflip: a coin when fired
                16: p, 17: p,                  # hue (cos - 1, sin)
                18: p}                         # saturation
    checks = {c: (nz[:, c], q) for c, q in expected.items()}
    # translate_int: zero unless round(2 w) != 0 on an axis, i.e. |w| > 1/4 (w uniform in [-1, 1))
    checks["translate_int"] = (nz[:, 4] | nz[:, 5], p * (1 - 1 / 16))
    for key, (hits, q) in checks.items():
        se = math.sqrt(q * (1 - q) / N)
        assert abs(hits.double().mean().item() - q) < 4 * se, (key, hits.double().mean().item(), q)
    # EDM's CIFAR-10 x-flip (multiplier 1e8) fires for every sample even at p = 0.12: half flip
    _, cifar = cifar10_augment_pipe()(torch.rand(N, 3, 4, 4, generator=gen(42)), gen(43))
    assert abs(cifar[:, 0].mean().item() - 0.5) < 4 * math.sqrt(0.25 / N)
    assert abs((cifar[:, 2] != 0).double().mean().item() - 0.12) < 4 * math.sqrt(0.12 * 0.88 / N)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_images_get_the_cpu_draws():
    """Randomness is drawn on the CPU: a CUDA batch gets the same labels and (to rounding) the same images."""
    pipe = AugmentPipe(p=0.7, xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
                       translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    x = rand_images(n=16, dtype=torch.float32, seed=70)
    y_cpu, l_cpu = pipe(x, gen(71))
    y_gpu, l_gpu = pipe(x.cuda(), gen(71))
    assert y_gpu.is_cuda and l_gpu.is_cuda
    assert torch.allclose(l_gpu.cpu(), l_cpu, atol=1e-6) and (y_gpu.cpu() - y_cpu).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------------ with the network

def test_labels_feed_songunet_map_augment():
    from sim_core.nets.songunet import SongUNet

    from nvidia_format import randomize_
    torch.manual_seed(0)
    net = randomize_(SongUNet(img_resolution=8, in_channels=3, out_channels=3, augment_dim=9, model_channels=16,
                              channel_mult=[1], num_blocks=1, attn_resolutions=[]), 1).eval()
    x = torch.randn(4, 3, 8, 8, generator=gen(50))
    y, labels = cifar10_augment_pipe(p=1.0)(x, gen(51))
    noise = torch.zeros(4)
    with torch.no_grad():
        with_aug = net(y, noise, augment_labels=labels)
        zero_aug = net(y, noise, augment_labels=torch.zeros_like(labels))
        none_aug = net(y, noise)
    # zero labels are 'no augmentation' (map_augment has no bias); real labels move the output by O(1)
    assert torch.allclose(zero_aug, none_aug, atol=1e-5) and (with_aug - zero_aug).abs().max() > 0.1


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs,needle", [
    (dict(p=-0.1), "p=-0.1"), (dict(p=1.5), "p=1.5"), (dict(scale=float("nan")), "scale=nan"),
    (dict(xflip=float("inf")), "xflip=inf"), (dict(aniso_std=-1), "aniso_std=-1"),
    (dict(aniso_rotate_prob=2), "aniso_rotate_prob=2"), (dict(hue_max="wide"), "hue_max must be a number"),
    (dict(translate_frac_std=None), "translate_frac_std must be a number"),
])
def test_bad_arguments_fail_in_one_line_naming_the_argument(kwargs, needle):
    with pytest.raises(ValueError) as e:
        AugmentPipe(**kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_images_and_generators_fail_clearly():
    pipe = cifar10_augment_pipe()
    cases = [(lambda: pipe(torch.zeros(3, 8, 8), gen(0)), r"\[N, C, H, W\], got \(3, 8, 8\)"),
             (lambda: pipe(torch.zeros(2, 3, 8, 8, dtype=torch.int64), gen(0)), "floating point"),
             (lambda: pipe(torch.zeros(2, 3, 1, 8), gen(0)), "at least 2x2"),
             (lambda: pipe(torch.zeros(2, 3, 8, 8), 0), "CPU torch.Generator"),
             (lambda: AugmentPipe(brightness=1)(torch.zeros(2, 2, 8, 8), gen(0)), "1 or 3 channels, got C=2"),
             (lambda: AugmentPipe(rotate_int=1)(torch.zeros(2, 3, 8, 6), gen(0)), "square images"),
             (lambda: pipe.apply(torch.zeros(2, 3, 8, 8), pipe.draw(3, 8, 8, gen(0))), "drawn for 3 images"),
             (lambda: pipe.apply(torch.zeros(2, 3, 8, 8), AugmentPipe(xflip=1).draw(2, 8, 8, gen(0))),
              r"drawn for transforms \['xflip'\]"),
             (lambda: AugmentPipe(translate_int=1, translate_int_max=0), "translate_int_max=0")]
    for call, needle in cases:
        with pytest.raises(ValueError, match=needle) as e:
            call()
        assert "\n" not in str(e.value)


def test_registry_by_name():
    assert AUGMENT_PIPES.build("edm_cifar10", p=0.2).kwargs() == cifar10_augment_pipe(0.2).kwargs()
    with pytest.raises(UnknownNameError, match="valid names: edm_cifar10"):
        AUGMENT_PIPES.get("cifar")
    assert isinstance(cifar10_augment_pipe().draw(2, 4, 4, gen(0)), AugmentParams)
