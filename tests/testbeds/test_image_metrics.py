"""Paper-scale FID / IS machinery (sim_core/testbeds/cifar10/inception.py, sim_core/testbeds/cifar10/image_metrics.py),
checked without downloads.

The real Inception weights cannot be fetched here, so the extractor is checked with a randomly initialised
InceptionV3 in torch-fidelity's own structure and file format; the FID / IS formulas are checked against direct
numpy/scipy computations and against torch-fidelity's own metric functions on the same features/logits.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from conftest import one_line
from sim_core.errors import CheckpointError
from sim_core.registry import UnknownNameError
from sim_core.testbeds.cifar10.image_metrics import (
    EDM_DDOF,
    FID_PROTOCOLS,
    SID_DDOF,
    FeatureStats,
    evaluate_fid_protocol,
    fid_from_stats,
    get_protocol,
    inception_score,
    load_reference_stats,
    save_reference_stats,
)
from sim_core.testbeds.cifar10.inception import INCEPTION_URL, InceptionFeatures, quantize

from nvidia_format import random_inception_state_dict

torch.set_num_threads(1)



def _correlated(rng, n, d, shift=0.0, scale=1.0):
    """n draws of a d-dim Gaussian with a random dense covariance (A A^T) and mean `shift`."""
    a = rng.normal(size=(d, d)) / math.sqrt(d)
    return shift + scale * rng.normal(size=(n, d)) @ a.T + 0.3 * rng.normal(size=(n, d))


def _fid_direct(x, y, ddof_x=1, ddof_y=1):
    """FID by a different route: Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}, a symmetric PSD matrix whose
    square root comes from eigh."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1 = np.atleast_2d(np.cov(x, rowvar=False, ddof=ddof_x))
    s2 = np.atleast_2d(np.cov(y, rowvar=False, ddof=ddof_y))
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


# ------------------------------------------------------------------------------------------------ FID formula
@pytest.mark.parametrize("d", [3, 64])
def test_streaming_fid_equals_direct_and_torch_fidelity(d):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    rng = np.random.default_rng(d)
    x = _correlated(rng, 700, d)
    y = _correlated(rng, 500, d, shift=0.4, scale=1.3)

    gen, ref = FeatureStats(), FeatureStats(d)
    for lo, hi in ((0, 1), (1, 250), (250, 700)):  # uneven chunks, one of a single row
        gen.update(x[lo:hi])
    for part in np.array_split(y, 3):
        ref.update(torch.from_numpy(part))         # torch input too
    assert gen.count == 700 and ref.count == 500

    for ddof in (EDM_DDOF, SID_DDOF):
        mu, sigma = gen.mean_cov(ddof)
        np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sigma, np.cov(x, rowvar=False, ddof=ddof), rtol=1e-9, atol=1e-12)
    # FID with EDM's (N - 1) on both sides, and with SiD's /N on the generated side
    fid_edm = fid_from_stats(*gen.mean_cov(EDM_DDOF), *ref.mean_cov(EDM_DDOF))
    fid_sid = fid_from_stats(*gen.mean_cov(SID_DDOF), *ref.mean_cov(EDM_DDOF))
    assert fid_edm == pytest.approx(_fid_direct(x, y), rel=1e-8)
    assert fid_sid == pytest.approx(_fid_direct(x, y, ddof_x=0), rel=1e-8)
    assert fid_edm > 0.1 and abs(fid_edm - fid_sid) > 1e-6  # the ddof choice is visible, not a no-op
    # torch-fidelity's own statistics (np.cov, N - 1) and metric (eigvals route) on the same features
    tf = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(x)),
                                  fid_features_to_statistics(torch.from_numpy(y)), verbose=False)
    assert fid_edm == pytest.approx(tf["frechet_inception_distance"], rel=1e-7)
    # identical statistics give 0 (up to round-off)
    assert abs(fid_from_stats(*gen.mean_cov(1), *gen.mean_cov(1))) < 1e-8
    # the reference code's route (scipy sqrtm of the product) gives the same value as the default eigh route
    assert fid_from_stats(*gen.mean_cov(1), *ref.mean_cov(1), method="sqrtm") == pytest.approx(fid_edm, rel=1e-9)


def test_fid_eigh_route_equals_sqrtm_at_inception_size_with_rank_deficient_covariances():
    """At 2048 dimensions with fewer samples than dimensions (singular covariances, as in short evaluations)
    the fast route still equals scipy's sqrtm of the product, as EDM computes it."""
    rng = np.random.default_rng(1)
    x = _correlated(rng, 300, 2048)
    A = rng.standard_normal((2048, 64))
    mu_r, sigma_r = rng.standard_normal(2048) * 0.1, A @ A.T / 64 + 0.05 * np.eye(2048)
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    fast = fid_from_stats(mu, sigma, mu_r, sigma_r)
    assert fast == pytest.approx(fid_from_stats(mu, sigma, mu_r, sigma_r, method="sqrtm"), rel=1e-7)
    with pytest.raises(ValueError, match="unknown method"):
        fid_from_stats(mu, sigma, mu_r, sigma_r, method="svd")


def test_feature_stats_merge_and_errors():
    rng = np.random.default_rng(0)
    x = _correlated(rng, 90, 5)
    a, b, whole = FeatureStats(), FeatureStats(), FeatureStats().update(x)
    a.update(x[:40]), b.update(x[40:])
    mu, sigma = a.merge(b).mean_cov(1)
    np.testing.assert_allclose(sigma, whole.mean_cov(1)[1], rtol=1e-12)
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        whole.update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN or inf"):
        whole.update(np.full((2, 5), np.nan))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(5).update(x[:1]).mean_cov(1)
    with pytest.raises(ValueError, match="ddof"):
        whole.mean_cov(2)
    with pytest.raises(ValueError, match="covariances"):
        fid_from_stats(mu, sigma, mu[:3], sigma)


# ------------------------------------------------------------------------------------------- Inception Score
def test_inception_score_equals_torch_fidelity_and_limits():
    from torch_fidelity.metric_isc import isc_features_to_metric
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(3.0 * rng.normal(size=(1003, 20)).astype(np.float32))  # N not divisible by 10
    ours = inception_score(logits, splits=10)
    tf = isc_features_to_metric(logits, splits=10, shuffle=False)
    assert ours[0] == pytest.approx(tf["inception_score_mean"], rel=1e-12)
    assert ours[1] == pytest.approx(tf["inception_score_std"], rel=1e-9)
    # torch-fidelity's default: shuffle with RandomState(2020) first
    tf_shuffled = isc_features_to_metric(logits, splits=10)
    ours_shuffled = inception_score(logits, splits=10, shuffle_seed=2020)
    assert ours_shuffled[0] == pytest.approx(tf_shuffled["inception_score_mean"], rel=1e-12)
    assert ours_shuffled[0] != ours[0]
    # limits: uniform predictions score 1; confident predictions spread evenly over C classes score ~C
    assert inception_score(torch.zeros(100, 7))[0] == pytest.approx(1.0, abs=1e-12)
    confident = 50.0 * torch.eye(8).repeat(40, 1)
    assert inception_score(confident, splits=4)[0] == pytest.approx(8.0, rel=1e-6)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits[:5], splits=10)


# -------------------------------------------------------------------------------------------------- quantize
def test_quantize_matches_reference_formula_at_the_boundaries():
    x = torch.tensor([-1.0, 1.0, 0.0, -1.5, 3.0, 1 / 127.5, -1 / 127.5, 0.99, -0.996])
    # -1 -> 0.5 -> 0; 1 -> 255.5 -> 255; 0 -> 128; 1/127.5 -> 129; -1/127.5 -> 127; 0.99 -> 254.2 -> 254;
    # -0.996 -> 1.01 -> 1
    assert quantize(x).tolist() == [0, 255, 128, 0, 255, 129, 127, 254, 1]
    assert quantize(x).dtype == torch.uint8
    grid = torch.linspace(-1.2, 1.2, 20001, dtype=torch.float64)
    expect = np.floor(np.clip(grid.numpy() * 127.5 + 128, 0, 255)).astype(np.uint8)
    assert np.array_equal(quantize(grid).numpy(), expect)
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(torch.tensor([0.0, float("nan")]))


# ------------------------------------------------------------------------------ reference statistics files
def test_reference_stats_round_trip_and_one_line_errors(tmp_path):
    rng = np.random.default_rng(2)
    x = _correlated(rng, 50, 4)
    mu, sigma = FeatureStats().update(x).mean_cov(EDM_DDOF)
    good = tmp_path / "ref.npz"
    sha = save_reference_stats(good, mu, sigma)
    mu2, sigma2 = load_reference_stats(good, sha256=sha, dim=4)
    assert np.array_equal(mu2, mu) and np.array_equal(sigma2, sigma) and mu2.dtype == np.float64

    def err(path, **kw):
        with pytest.raises(CheckpointError) as e:
            load_reference_stats(path, dim=4, **kw)
        msg = one_line(e)
        assert str(path) in msg
        return msg

    assert "not found" in err(tmp_path / "missing.npz") and "cifar10-32x32.npz" in err(tmp_path / "missing.npz")
    assert "SHA-256" in err(good, sha256="0" * 64)
    np.savez(tmp_path / "nokey.npz", mu=mu, cov=sigma)
    assert "no key 'sigma'" in err(tmp_path / "nokey.npz")
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=sigma[:3, :3])
    assert "'sigma' has shape (3, 3), expected (4, 4)" in err(tmp_path / "shape.npz")
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    assert "corrupt" in err(tmp_path / "trunc.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    assert "corrupt" in err(tmp_path / "garbage.npz")
    bad = sigma.copy()
    bad[0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", mu=mu, sigma=bad)
    assert "NaN or inf" in err(tmp_path / "inf.npz")
    bad = sigma.copy()
    bad[0, 1] += 1.0
    np.savez(tmp_path / "asym.npz", mu=mu, sigma=bad)
    assert "not symmetric" in err(tmp_path / "asym.npz")


# ---------------------------------------------------------------------------------------------- protocols
D_TOY, C_TOY = 6, 5
_W_POOL = torch.randn(3 * 4 * 4, D_TOY, generator=torch.Generator().manual_seed(7), dtype=torch.float64) / 7
_W_LOGIT = torch.randn(3 * 4 * 4, C_TOY, generator=torch.Generator().manual_seed(8), dtype=torch.float64) / 7


def _toy_sample(seed: int) -> torch.Tensor:
    """One 3x4x4 image per seed: a seed-dependent brightness plus noise, quantised like generator output."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(1, generator=g) + 0.4 * torch.randn(3, 4, 4, generator=g)
    return quantize(x.clamp(-1, 1))


def _toy_features(images):
    f = images.to(torch.float64).flatten(1) / 255.0
    return f @ _W_POOL, f @ _W_LOGIT


def _toy_reference():
    """Reference statistics of a slightly different image distribution (EDM format, N - 1)."""
    g = torch.Generator().manual_seed(123)
    x = quantize((0.1 + 0.35 * torch.randn(400, 3, 4, 4, generator=g)).clamp(-1, 1))
    return FeatureStats().update(_toy_features(x)[0]).mean_cov(EDM_DDOF)


def _recording_sampler(calls):
    def sample_fn(seeds):
        calls.append(list(seeds))
        return torch.stack([_toy_sample(s) for s in seeds])
    return sample_fn


def test_edm_protocol_is_min_of_three_disjoint_seed_ranges():
    ref = _toy_reference()
    calls = []
    n = 40
    out = evaluate_fid_protocol("edm", _recording_sampler(calls), _toy_features, ref, num_samples=n, batch_size=16)
    assert out["num_trials"] == 3 and len(out["trials"]) == 3
    assert out["trial_seeds"] == [(0, 39), (40, 79), (80, 119)]
    seen = [s for c in calls for s in c]
    assert sorted(seen) == list(range(3 * n)) and len(set(seen)) == len(seen)  # disjoint, each seed once
    assert max(len(c) for c in calls) == 16
    # each trial is the EDM FID (N - 1 on both sides) of exactly its seed range
    for k, fid in enumerate(out["trials"]):
        pool = _toy_features(torch.stack([_toy_sample(s) for s in range(k * n, (k + 1) * n)]))[0].numpy()
        mu, sigma = pool.mean(0), np.cov(pool, rowvar=False)
        assert fid == pytest.approx(fid_from_stats(mu, sigma, *ref), rel=1e-9)
    assert len(set(out["trials"])) == 3                     # the trials differ, so the min is a real choice
    assert out["value"] == min(out["trials"])
    assert out["spread"] == pytest.approx(max(out["trials"]) - min(out["trials"]))
    assert out["cell"] == f"{min(out['trials']):.2f} (min of 3, EDM protocol)"
    # IS of the first trial's images, 10 splits
    logits = _toy_features(torch.stack([_toy_sample(s) for s in range(n)]))[1]
    assert (out["inception_score"], out["inception_score_std"]) == pytest.approx(inception_score(logits, 10))
    assert out["inception_score"] > 1.0


def test_sid_protocol_is_mean_and_std_of_ten_trials():
    ref = _toy_reference()
    calls = []
    n = 24
    out = evaluate_fid_protocol("sid", _recording_sampler(calls), _toy_features, ref, num_samples=n, batch_size=24)
    trials = out["trials"]
    assert len(trials) == 10 and out["trial_seeds"][9] == (216, 239)
    assert sorted(s for c in calls for s in c) == list(range(10 * n))
    assert out["value"] == pytest.approx(np.mean(trials), rel=1e-12)
    assert out["spread"] == pytest.approx(np.std(trials, ddof=1), rel=1e-12) and out["spread"] > 0
    assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d \(mean ± std of 10, SiD protocol\)", out["cell"])
    assert out["cell"].startswith(f"{np.mean(trials):.2f} ± {np.std(trials, ddof=1):.2f}")
    # SiD's generated covariance divides by N (metric_utils.FeatureStats), the reference keeps EDM's N - 1
    pool = _toy_features(torch.stack([_toy_sample(s) for s in range(n)]))[0].numpy()
    assert trials[0] == pytest.approx(fid_from_stats(pool.mean(0), np.cov(pool, rowvar=False, ddof=0), *ref),
                                      rel=1e-9)
    assert trials[0] != pytest.approx(fid_from_stats(pool.mean(0), np.cov(pool, rowvar=False, ddof=1), *ref),
                                      rel=1e-6)


def test_protocol_registry_and_bad_inputs():
    assert FID_PROTOCOLS.names() == ["edm", "sid"]
    assert get_protocol("edm").seeds(2, 50000)[::49999] == [100000, 149999]  # EDM's third range
    with pytest.raises(UnknownNameError) as e:
        evaluate_fid_protocol("clean-fid", lambda s: None, _toy_features, _toy_reference(), num_samples=12)
    assert "valid names: edm, sid" in one_line(e)
    ref = _toy_reference()
    with pytest.raises(ValueError) as e:  # float images instead of uint8
        evaluate_fid_protocol("edm", lambda s: torch.zeros(len(s), 3, 4, 4), _toy_features, ref, num_samples=12)
    assert "uint8" in one_line(e)
    with pytest.raises(ValueError) as e:  # one image short
        evaluate_fid_protocol("edm", lambda s: torch.stack([_toy_sample(x) for x in s[1:]]), _toy_features, ref,
                              num_samples=12)
    assert "one image per seed" in one_line(e)
    with pytest.raises(ValueError) as e:  # reference statistics of another dimension
        evaluate_fid_protocol("edm", _recording_sampler([]), _toy_features, (np.zeros(3), np.eye(3)),
                              num_samples=12)
    assert "dimension 3" in one_line(e)


# ---------------------------------------------------------------------------- Inception with random weights
@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    from sim_core.files import sha256_file
    tmp = tmp_path_factory.mktemp("inception")
    state = random_inception_state_dict(tmp)
    path = tmp / "weights-inception-random.pth"
    torch.save(state, path)
    return path, sha256_file(path), state


def test_inception_features_equal_torch_fidelity_extractor(random_inception):
    import torch_fidelity
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    path, sha, state = random_inception
    g = torch.Generator().manual_seed(3)
    images = quantize(torch.rand(4, 3, 32, 32, generator=g) * 2 - 1)

    ours = InceptionFeatures(path, sha256=sha)
    assert ours.sha256 == sha
    pool, logits = ours.features(images, batch_size=4)
    assert pool.dtype == logits.dtype == torch.float64
    assert tuple(pool.shape) == (4, 2048) and tuple(logits.shape) == (4, 1008)
    assert 0.05 < float(pool.std()) < 100 and float((pool > 0).float().mean()) > 0.2  # live, order-1 features

    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(path)).eval()
    with torch.no_grad():
        t_pool, t_logits = theirs(images)
    torch.testing.assert_close(pool, t_pool.double(), rtol=0, atol=0)
    torch.testing.assert_close(logits, t_logits.double(), rtol=0, atol=0)
    # logits_unbiased = pool3 @ W^T without the output bias (the IS input of NVIDIA's is50k)
    torch.testing.assert_close(logits, pool @ state["fc.weight"].double().T, rtol=1e-4, atol=1e-4)
    # batching does not change the features
    pool3, logits3 = ours.features(images, batch_size=3)
    torch.testing.assert_close(pool3, pool, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits3, logits, rtol=1e-5, atol=1e-5)

    # the whole IS chain equals torch-fidelity's calculate_metrics with the same weights file
    from torch.utils.data import Dataset

    class Images(Dataset):
        def __len__(self):
            return images.shape[0]

        def __getitem__(self, i):
            return images[i]

    m = torch_fidelity.calculate_metrics(input1=Images(), isc=True, isc_splits=2, samples_shuffle=False,
                                         feature_extractor_weights_path=str(path), cuda=False, cache=False,
                                         save_cpu_ram=True, verbose=False, batch_size=4)  # no worker processes
    is_mean, is_std = inception_score(logits, splits=2)
    assert is_mean == pytest.approx(m["inception_score_mean"], rel=1e-6)
    assert is_std == pytest.approx(m["inception_score_std"], rel=1e-4, abs=1e-9)

    with pytest.raises(ValueError) as e:
        ours.features(images.float())
    assert "uint8" in one_line(e)


def test_inception_weights_errors_are_one_line_and_early(tmp_path, random_inception):
    path, sha, state = random_inception
    with pytest.raises(CheckpointError) as e:
        InceptionFeatures(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    msg = one_line(e)
    assert "not found" in msg and str(tmp_path) in msg and INCEPTION_URL in msg
    # wrong checksum: refused before the file is read (garbage bytes would otherwise fail as 'corrupt')
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 1000)
    for p, expected in ((path, "0" * 64), (garbage, sha)):
        with pytest.raises(CheckpointError) as e:
            InceptionFeatures(p, sha256=expected)
        msg = one_line(e)
        assert "SHA-256" in msg and str(p) in msg and INCEPTION_URL in msg
    # default pin is torch-fidelity's published file, which the random weights are not
    with pytest.raises(CheckpointError, match="SHA-256"):
        InceptionFeatures(path)
    # without a pin: corrupt file and a state dict of the wrong network each one line
    with pytest.raises(CheckpointError) as e:
        InceptionFeatures(garbage, sha256=None)
    assert "corrupt" in one_line(e)
    broken = dict(state)
    broken.pop("fc.bias")
    broken["fc.weight"] = broken["fc.weight"][:10]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as e:
        InceptionFeatures(tmp_path / "broken.pth", sha256=None)
    assert "do not fit" in one_line(e) and "fc." in str(e.value)
