"""EDM's DDPM++ SongUNet: architecture of the CIFAR-10 vp checkpoints, initialisation, and the forward arithmetic
checked piece by piece against straightforward computations written here."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sim_core.core.edm import EDMPrecond
from sim_core.errors import ConfigError
from sim_core.nets import NETWORKS, build_network
from sim_core.nets.songunet import Conv2d, GroupNorm, Linear, SongUNet, UNetBlock, cifar10_ddpmpp_kwargs, uninitialized

from nvidia_format import randomize_

torch.set_num_threads(1)

SMALL = dict(img_resolution=16, in_channels=3, out_channels=3, augment_dim=9, model_channels=16, channel_mult=[1, 2],
             num_blocks=1, attn_resolutions=[8], dropout=0.13)


def small(label_dim=0, seed=0, **over) -> SongUNet:
    torch.manual_seed(seed)
    return randomize_(SongUNet(**{**SMALL, "label_dim": label_dim, **over}), seed + 100)


def inputs(n=3, label_dim=0, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g, dtype=dtype)
    c_noise = torch.linspace(-1.5, 1.0, n, dtype=dtype)  # ln(sigma)/4 for sigma in [0.0025, 55]
    labels = F.one_hot(torch.arange(n) % label_dim, label_dim).to(dtype) if label_dim else None
    return x, c_noise, labels


# ---------------------------------------------------------------- full-size architecture (docs/reference-code.md#nvidias-edm-checkpoints)

@pytest.fixture(scope="module")
def cifar_nets():
    torch.manual_seed(0)
    return {ld: SongUNet(**cifar10_ddpmpp_kwargs(ld)) for ld in (0, 10)}


@pytest.mark.parametrize("label_dim,count,tensors", [(0, 55_733_891, 417), (10, 55_735_299, 419)])
def test_cifar10_parameter_count_and_names(cifar_nets, label_dim, count, tensors):
    net = cifar_nets[label_dim]
    params = list(net.parameters())
    assert sum(p.numel() for p in params) == count
    assert len(params) == tensors
    sd = net.state_dict()
    filters = sorted(k for k in sd if k.endswith("resample_filter"))
    assert filters == sorted(f"{side}.{res}_{kind}.{conv}.resample_filter" for side, res, kind in
                             (("enc", "16x16", "down"), ("enc", "8x8", "down"), ("dec", "16x16", "up"),
                              ("dec", "32x32", "up")) for conv in ("conv0", "skip"))
    for k in filters:  # the [1,1] filter: a 2x2 box of 1/4
        assert torch.equal(sd[k], torch.full((1, 1, 2, 2), 0.25))
    shapes = {"map_augment.weight": (128, 9), "map_layer0.weight": (512, 128), "map_layer1.weight": (512, 512),
              "enc.32x32_conv.weight": (128, 3, 3, 3), "enc.32x32_block0.skip.weight": (256, 128, 1, 1),
              "enc.16x16_block0.qkv.weight": (768, 256, 1, 1), "enc.16x16_down.skip.weight": (256, 256, 1, 1),
              "dec.8x8_in0.proj.weight": (256, 256, 1, 1), "dec.16x16_block4.qkv.weight": (768, 256, 1, 1),
              "dec.32x32_block0.conv0.weight": (256, 512, 3, 3), "dec.32x32_block4.conv0.weight": (256, 384, 3, 3),
              "dec.32x32_aux_norm.weight": (256,), "dec.32x32_aux_conv.weight": (3, 256, 3, 3),
              "dec.32x32_aux_conv.bias": (3,)}
    if label_dim:
        shapes["map_label.weight"] = (128, 10)
    else:
        assert not any(k.startswith("map_label") for k in sd)
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    assert "map_augment.bias" not in sd and "map_noise" not in "".join(sd)  # parameter-free noise embedding
    attn = sorted(k[:-len(".qkv.weight")] for k in sd if k.endswith("qkv.weight"))
    assert attn == ["dec.16x16_block4", "dec.8x8_in0", "enc.16x16_block0", "enc.16x16_block1", "enc.16x16_block2",
                    "enc.16x16_block3"]
    assert list(net.enc) == ["32x32_conv"] + [f"32x32_block{i}" for i in range(4)] + ["16x16_down"] + \
        [f"16x16_block{i}" for i in range(4)] + ["8x8_down"] + [f"8x8_block{i}" for i in range(4)]
    assert list(net.dec)[:3] == ["8x8_in0", "8x8_in1", "8x8_block0"] and list(net.dec)[-2:] == \
        ["32x32_aux_norm", "32x32_aux_conv"]


def test_cifar10_initialisation(cifar_nets):
    """xavier_uniform everywhere: U(-a, a), a = gain*sqrt(6/(fan_in+fan_out)), gain 1e-5 for conv1 / proj /
    aux_conv, sqrt(0.2) for qkv; biases 0; GroupNorm 1/0 with min(32, C/4) groups, eps 1e-6."""
    net = cifar_nets[10]
    for name, m in net.named_modules():
        if isinstance(m, (Linear, Conv2d)) and m.weight is not None:
            w = m.weight.detach()
            fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
            last = name.split(".")[-1]
            gain = 1e-5 if last in ("conv1", "proj", "32x32_aux_conv") else math.sqrt(0.2) if last == "qkv" else 1
            bound = gain * math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max() <= bound * (1 + 1e-6), name
            if w.numel() >= 10_000:  # std of U(-a, a) is a/sqrt(3); 5% is > 7 standard errors here
                assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.05, name
            if m.bias is not None:
                assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
        if isinstance(m, GroupNorm):
            c = m.weight.shape[0]
            assert m.num_groups == min(32, c // 4) and m.eps == 1e-6, name
            assert torch.equal(m.weight, torch.ones(c)) and torch.equal(m.bias, torch.zeros(c)), name
        if isinstance(m, UNetBlock):
            assert m.skip_scale == math.sqrt(0.5) and m.dropout == 0.13 and not m.adaptive_scale
            assert m.num_heads in (0, 1)


def test_cifar10_kwargs_and_registry():
    kw = cifar10_ddpmpp_kwargs(10)
    assert kw == dict(img_resolution=32, in_channels=3, out_channels=3, label_dim=10, augment_dim=9,
                      model_channels=128, channel_mult=[2, 2, 2], channel_mult_emb=4, num_blocks=4,
                      attn_resolutions=[16], dropout=0.13, label_dropout=0.0, embedding_type="positional",
                      channel_mult_noise=1, encoder_type="standard", decoder_type="standard", resample_filter=[1, 1])
    assert cifar10_ddpmpp_kwargs(0)["label_dim"] == 0
    with pytest.raises(ConfigError, match="label_dim 0 .* or 10, not 100"):
        cifar10_ddpmpp_kwargs(100)
    assert "songunet" in NETWORKS.names()
    net = build_network("songunet", **{**SMALL, "label_dim": 10})
    assert isinstance(net, SongUNet)
    json.dumps(net.init_kwargs)  # plain data: stored in teacher files and rebuilt from them
    again = SongUNet(**net.init_kwargs)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert again.init_kwargs == net.init_kwargs


@pytest.mark.parametrize("over,msg", [
    (dict(embedding_type="fourier"), "embedding_type='fourier' is not implemented"),
    (dict(encoder_type="residual"), "encoder_type='residual' is not implemented"),
    (dict(decoder_type="skip"), "decoder_type='skip' is not implemented"),
    (dict(img_resolution=18, channel_mult=[1, 2, 2]), "img_resolution 18 is not divisible by 2\\^2"),
    (dict(dropout=1.0), "dropout 1.0"),
    (dict(model_channels=18), "18 channels cannot be split"),
])
def test_bad_constructor_arguments_fail_in_one_line(over, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        SongUNet(**{**SMALL, **over})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="bad parameters"):  # a misspelt argument, through the registry
        build_network("songunet", **SMALL, chanel_mult=[1])


def test_uninitialized_builds_skip_the_random_draws():
    state = torch.random.get_rng_state()
    with uninitialized():
        net = SongUNet(**SMALL)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(0)
    a = SongUNet(**SMALL)
    torch.manual_seed(0)
    b = SongUNet(**SMALL)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())  # seeded init
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}


# ---------------------------------------------------------------- pieces of the forward pass

def test_resampling_is_box_average_and_nearest_neighbour():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    down, up = Conv2d(4, 4, kernel=0, down=True), Conv2d(4, 4, kernel=0, up=True)
    assert torch.allclose(down(x), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.equal(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    # resampling happens before the convolution (conv0) and inside the 1x1 skip
    conv0 = randomize_(Conv2d(4, 6, kernel=3, down=True), 1)
    assert torch.allclose(conv0(x), F.conv2d(F.avg_pool2d(x, 2), conv0.weight, conv0.bias, padding=1), atol=1e-5)
    skip = randomize_(Conv2d(4, 6, kernel=1, up=True), 2)
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(skip(x), F.conv2d(nearest, skip.weight, skip.bias), atol=1e-5)


def test_noise_embedding_order_and_mapping_network():
    """PositionalEmbedding(endpoint=True): f_i = 10000^(-i/(half-1)); SongUNet swaps to [sin, cos] and then
    emb = SiLU(L1(SiLU(L0(. + map_label(onehot*sqrt(10)) + map_augment(aug)))))."""
    net = small(label_dim=10).eval()
    c = torch.tensor([-1.3, 0.0, 0.7])
    half = 8  # model_channels 16 * channel_mult_noise 1
    f = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / (half - 1))
    phase = c.double()[:, None] * f[None]
    assert f[0] == 1 and math.isclose(f[-1].item(), 1e-4)
    assert torch.allclose(net.map_noise(c).double(), torch.cat([phase.cos(), phase.sin()], 1), atol=1e-6)

    labels = F.one_hot(torch.tensor([2, 0, 9]), 10).float()
    aug = torch.randn(3, 9, generator=torch.Generator().manual_seed(3))
    dense = lambda layer, v: v @ layer.weight.T + (layer.bias if layer.bias is not None else 0)  # noqa: E731
    e = torch.cat([phase.sin(), phase.cos()], 1).float() + dense(net.map_label, labels * math.sqrt(10)) \
        + aug @ net.map_augment.weight.T
    expected = F.silu(dense(net.map_layer1, F.silu(dense(net.map_layer0, e))))
    assert torch.allclose(net.embedding(c, labels, aug), expected, atol=1e-5)
    assert not torch.allclose(net.embedding(c, labels, aug), net.embedding(c, labels.roll(1, 0), aug), atol=1e-3)


@pytest.mark.parametrize("down,up", [(True, False), (False, True), (False, False)])
def test_residual_block_against_direct_computation(down, up):
    """h = conv0(SiLU(GN(x))) [resampled first]; h = SiLU(GN(h + affine(emb))); h = conv1(h);
    out = (h + skip(x)) * sqrt(1/2), GroupNorm with min(32, C/4) groups and eps 1e-6."""
    cin, cout = 8, 12
    block = UNetBlock(cin, cout, emb_channels=5, up=up, down=down, skip_scale=math.sqrt(0.5), eps=1e-6,
                      resample_proj=True, adaptive_scale=False)
    randomize_(block, 9).double().eval()
    g = torch.Generator().manual_seed(10)
    x, emb = torch.randn(2, cin, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g,
                                                                                     dtype=torch.float64)

    def gn(t, m):
        return F.group_norm(t, min(32, t.shape[1] // 4), m.weight, m.bias, eps=1e-6)

    def resample(t):
        return F.avg_pool2d(t, 2) if down else t.repeat_interleave(2, 2).repeat_interleave(2, 3) if up else t

    h = F.conv2d(resample(F.silu(gn(x, block.norm0))), block.conv0.weight, block.conv0.bias, padding=1)
    h = F.silu(gn(h + (emb @ block.affine.weight.T + block.affine.bias)[:, :, None, None], block.norm1))
    h = F.conv2d(h, block.conv1.weight, block.conv1.bias, padding=1)
    skip = F.conv2d(resample(x), block.skip.weight, block.skip.bias)
    assert torch.allclose(block(x, emb), (h + skip) * math.sqrt(0.5), atol=1e-10, rtol=1e-10)


def test_decoder_takes_encoder_skips_last_in_first_out():
    """Every decoder block whose input width differs from the running width gets cat([x, newest unused encoder
    output]); the network output is aux_conv(SiLU(aux_norm(last decoder block output)))."""
    net = small().eval()
    enc_out, dec_in, dec_out = [], [], {}
    for m in net.enc.values():
        m.register_forward_hook(lambda m, i, o: enc_out.append(o))
    for name, m in net.dec.items():
        m.register_forward_pre_hook(lambda m, i, name=name: dec_in.append((name, i[0])))
        m.register_forward_hook(lambda m, i, o, name=name: dec_out.__setitem__(name, o))
    x, c, _ = inputs()
    y = net(x, c)
    stack, running, concatenated = list(enc_out), enc_out[-1], []
    for name, inp in dec_in:
        if name.endswith("aux_norm"):
            assert torch.equal(inp, running)
            continue
        if name.endswith("aux_conv"):
            assert torch.equal(inp, F.silu(dec_out[name.replace("conv", "norm")]))
            continue
        if inp.shape[1] != running.shape[1]:
            assert torch.equal(inp, torch.cat([running, stack.pop()], dim=1)), name
            concatenated.append(name)
        else:
            assert torch.equal(inp, running), name
        running = dec_out[name]
    assert concatenated == ["8x8_block0", "8x8_block1", "16x16_block0", "16x16_block1"] and not stack
    assert torch.equal(y, dec_out["16x16_aux_conv"])


@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_against_direct_computation(num_heads):
    """qkv channels interleaved per channel (q, k, v of channel i at 3i, 3i+1, 3i+2 within each head), softmax
    over keys of q.k/sqrt(C/heads), output (proj(attention) + h) * sqrt(1/2)."""
    C, heads = 16, num_heads
    block = UNetBlock(8, C, emb_channels=12, attention=True, num_heads=heads, skip_scale=math.sqrt(0.5), eps=1e-6,
                      resample_proj=True, adaptive_scale=False)
    randomize_(block, 5).double().eval()
    g = torch.Generator().manual_seed(6)
    x, emb = torch.randn(2, 8, 6, 6, generator=g, dtype=torch.float64), torch.randn(2, 12, generator=g,
                                                                                   dtype=torch.float64)
    seen = {}
    block.norm2.register_forward_hook(lambda m, inp, out: seen.update(h=inp[0], n=out))
    out = block(x, emb)

    h, n = seen["h"], seen["n"]
    B, P, d = h.shape[0], h.shape[2] * h.shape[3], C // heads
    qkv = torch.einsum("oc,bcp->bop", block.qkv.weight[:, :, 0, 0], n.reshape(B, C, P)) \
        + block.qkv.bias[None, :, None]

    def attend(split):
        outs = []
        for head in range(heads):
            q, k, v = split(qkv[:, head * 3 * d:(head + 1) * 3 * d])
            A = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(d), dim=-1)   # (B, query, key)
            outs.append(v @ A.transpose(1, 2))                                 # (B, d, query)
        a = torch.cat(outs, 1).reshape(B, C, *h.shape[2:])
        return (F.conv2d(a, block.proj.weight, block.proj.bias) + h) * math.sqrt(0.5)

    interleaved = attend(lambda t: (t[:, 0::3], t[:, 1::3], t[:, 2::3]))
    assert torch.allclose(out, interleaved, atol=1e-10, rtol=1e-10)
    thirds = attend(lambda t: t.chunk(3, dim=1))  # the usual layout: a different network
    assert (out - thirds).abs().max() > 1e-2


def test_dropout_sits_before_conv1_and_only_in_train_mode():
    block = randomize_(UNetBlock(8, 8, emb_channels=4, dropout=0.5, skip_scale=math.sqrt(0.5), eps=1e-6,
                                 adaptive_scale=False), 7)
    g = torch.Generator().manual_seed(8)
    x, emb = torch.randn(4, 8, 8, 8, generator=g), torch.randn(4, 4, generator=g)
    seen = []
    block.conv1.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    block.eval()
    ref = block(x, emb)
    assert torch.equal(block(x, emb), ref)
    block.train()
    torch.manual_seed(0)
    out = block(x, emb)
    clean, dropped = seen[0], seen[-1]
    kept = dropped != 0
    assert 0.45 < 1 - kept.float().mean().item() < 0.55  # p = 0.5 of 2048 activations
    assert torch.allclose(dropped[kept], clean[kept] * 2)  # survivors scaled by 1/(1-p)
    assert (out - ref).abs().max() > 1e-2


def test_network_dropout_determinism_and_batch_independence():
    net = small()
    x, c, _ = inputs()
    net.train()
    assert (net(x, c) - net(x, c)).abs().max() > 1e-3  # dropout 0.13 active
    net.eval()
    y = net(x, c)
    assert torch.equal(net(x, c), y)  # deterministic in eval mode
    assert y.shape == x.shape and y.dtype == torch.float32
    for i in range(3):  # no mixing across the batch (attention reshapes, GroupNorm)
        assert torch.allclose(net(x[i:i + 1], c[i:i + 1]), y[i:i + 1], atol=1e-5)
    net0 = small(dropout=0.0).train()
    assert torch.equal(net0(x, c), net0(x, c))


def test_float64_input_matches_float32():
    net = small(label_dim=10).eval()
    x, c, labels = inputs(label_dim=10)
    y32 = net(x, c, labels)
    y64 = net(x.double(), c.double(), labels.double())
    assert y64.dtype == torch.float64
    scale = y64.abs().max()
    assert scale > 0.1
    assert (y32.double() - y64).abs().max() / scale < 1e-4
    assert (y32.double() - y64).abs().max() / scale > 0  # really two precisions


def test_labels_and_augment_labels():
    net = small(label_dim=10).eval()
    x, c, labels = inputs(label_dim=10)
    y = net(x, c, labels)
    assert (net(x, c, labels.roll(1, dims=1)) - y).abs().max() > 1e-2  # output depends on the class
    assert torch.equal(net(x, c, labels, augment_labels=torch.zeros(3, 9)), y)  # no bias: None == zeros(9)
    assert (net(x, c, labels, augment_labels=torch.full((3, 9), 0.5)) - y).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs class labels"):
        net(x, c)


def test_label_dropout_zeroes_whole_label_vectors_in_train_mode():
    net = small(label_dim=10, label_dropout=0.5, dropout=0.0)
    c = torch.zeros(400)
    labels = F.one_hot(torch.full((400,), 4), 10).float()
    with torch.no_grad():
        net.eval()
        kept, dropped = net.embedding(c[:1], labels[:1])[0], net.embedding(c[:1], torch.zeros(1, 10))[0]
        net.train()
        torch.manual_seed(1)
        e = net.embedding(c, labels)
        is_kept = torch.isclose(e, kept, atol=1e-6).all(1)
        is_dropped = torch.isclose(e, dropped, atol=1e-6).all(1)
        assert bool((is_kept ^ is_dropped).all())
        assert 0.4 < is_dropped.float().mean().item() < 0.6  # p = 0.5 of 400 rows
        net.eval()
        assert torch.isclose(net.embedding(c, labels), kept, atol=1e-6).all()


def test_gradients_reach_the_input_and_teacher_file_round_trip(tmp_path):
    from sim_core.testbeds.edm_teacher import load_teacher, save_teacher
    D = EDMPrecond(small(label_dim=10), label_dim=10).eval()
    x, _, labels = inputs(label_dim=10)
    x.requires_grad_(True)
    D(x, torch.full((3,), 2.5), labels).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    sha = save_teacher(tmp_path / "t.pt", D, testbed="cifar10", data_shape=[3, 16, 16])
    D2, meta = load_teacher(tmp_path / "t.pt", sha256=sha)
    assert meta["network"]["name"] == "songunet" and isinstance(D2.model, SongUNet)
    with torch.no_grad():
        assert torch.equal(D2(x, torch.full((3,), 2.5), labels), D(x, torch.full((3,), 2.5), labels))
