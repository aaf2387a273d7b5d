"""EDM's AugmentPipe in the psi-step (online.augment_p, as SiD and DI on CIFAR-10): the online network learns on
augmented generated images and gets their augment labels; the draws are made for the global batch, so gradient
accumulation and resume give the same run; a testbed that cannot take augment labels is refused in one line."""
from __future__ import annotations

import pytest
import torch

from sim_core.core.edm import EDMPrecond
from sim_core.core.losses import PsiLoss, edm_denoising_loss
from sim_core.core.time_dists import build_time_distribution
from sim_core.errors import ConfigError
from sim_core.nets.mlp import ResidualMLP
from sim_core.nets.songunet import SongUNet
from sim_core.testbeds.base import Testbed as BaseTestbed
from sim_core.train.augment import cifar10_augment_pipe
from sim_core.train.config import parse_config
from sim_core.train.loop import Distiller

from numerics import parameters, steps

torch.set_num_threads(1)


def _songunet_testbed(augment_dim: int = 9) -> BaseTestbed:
    torch.manual_seed(0)
    net = SongUNet(img_resolution=8, in_channels=3, out_channels=3, augment_dim=augment_dim, model_channels=8,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)
    for p in net.parameters():  # EDM's near-zero output layers would hide the augment labels' effect
        torch.nn.init.normal_(p, std=0.1)
    return BaseTestbed(EDMPrecond(net), dict(data_shape=[3, 8, 8], label_dim=0))


def _raw(augment_p=1.0, **over) -> dict:
    raw = dict(name="aug", dtype="float64", testbed=dict(kind="digits", teacher="unused.pt", conditional=False),
               method=dict(name="sid"), online=dict(augment_p=augment_p),
               optim=dict(batch_size=8, lr_gen=1e-3, lr_online=1e-3), train=dict(iterations=4, progress=False))
    raw.update(over)
    return raw


def _distiller(tmp_path, testbed=None, **raw) -> Distiller:
    return Distiller(parse_config(_raw(**raw)), tmp_path, testbed or _songunet_testbed(),
                     evaluator=lambda G, step: {})


def test_online_loss_trains_on_augmented_images_with_their_labels():
    D = _songunet_testbed().D_teacher.double()
    seen = []
    D.model.map_augment.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    pipe = cifar10_augment_pipe(p=1.0)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    loss = PsiLoss(build_time_distribution("p_edm"))
    noise = loss.draw(6, (3, 8, 8), g, torch.float64)
    sigma, eps = noise.sigma, noise.eps
    params = pipe.draw(6, 8, 8, g)
    got = loss.loss(D, x0, None, noise, augment=(pipe, params))
    y, labels = pipe.apply(x0, params)
    assert (y - x0).abs().max() > 0.1 and labels.abs().sum() > 0  # the augmentation really did something
    expected = edm_denoising_loss(D, y, sigma, eps, loss.weighting(sigma), None, labels)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(seen[0], labels, rtol=0, atol=0)  # the labels reached map_augment
    plain = loss.loss(D, x0, None, noise)
    assert (plain - got).abs().max() > 1e-3


def test_augmented_run_is_the_same_under_grad_accum_and_resume(tmp_path):
    """The pipe's parameters are drawn for the global batch and sliced: micro-batches 8, 4, 2 give the one-batch
    update (float64 summation order); a checkpoint after 2 iterations resumes into the uninterrupted run bit for
    bit; and the augmentation changes the run (the same seed with augment_p = 0 ends elsewhere). The resampling's
    padding depends on the images in the batch, which moves the augmented pixels by ~1e-14; lambda_EDM's 1/sigma^2
    at small sigma and Adam's normalisation of near-zero gradients make that ~1e-11 in the losses and <= 1e-7 in
    the parameters after 4 iterations (measured), against > 1e-4 for a run without augmentation."""
    runs = {}
    for k in (1, 2, 4):
        d = _distiller(tmp_path / f"k{k}", perf=dict(grad_accum=k))
        runs[k] = (steps(d, 4), parameters(d))
    for k in (2, 4):
        torch.testing.assert_close(torch.tensor(runs[k][0]), torch.tensor(runs[1][0]), rtol=1e-9, atol=1e-12)
        for name, p in runs[1][1].items():
            torch.testing.assert_close(runs[k][1][name], p, rtol=0, atol=1e-6, msg=name)

    first = _distiller(tmp_path / "resumed")
    losses = steps(first, 2)
    first.save_checkpoint()
    again = _distiller(tmp_path / "resumed")
    assert again.try_resume()
    losses += steps(again, 2)
    assert losses == runs[1][0]
    assert all(torch.equal(p, runs[1][1][name]) for name, p in parameters(again).items())

    off = _distiller(tmp_path / "off", augment_p=0.0)
    steps(off, 4)
    assert max((p - runs[1][1][n]).abs().max().item() for n, p in parameters(off).items()) > 1e-4


def test_augmentation_without_augment_labels_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        _distiller(tmp_path, _songunet_testbed(augment_dim=0), augment_p=0.12)
    assert str(e.value).startswith("online.augment_p=0.12: EDM's AugmentPipe needs images and a network with "
                                   "augment_dim=9") and "\n" not in str(e.value)
    torch.manual_seed(0)
    mlp = BaseTestbed(EDMPrecond(ResidualMLP((2,), hidden=8, blocks=1)), dict(data_shape=[2], label_dim=0))
    with pytest.raises(ConfigError, match=r"data of shape \[2\]"):
        _distiller(tmp_path, mlp, augment_p=0.12)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="online.augment_p"):
            parse_config(_raw(augment_p=bad))
