"""The CIFAR-10 testbed's files in the asset manifest (sim_core/assets.py), with their URLs, checksums and the
content check of each kind. Imports no torch until a file is checked."""
from __future__ import annotations

from pathlib import Path

from sim_core.assets import DIRECTORY_CHECKS, VALIDATORS, Asset, file_digests, first_line, register_asset
from sim_core.errors import CheckpointError

_EDM = "https://nvlabs-fi-cdn.nvidia.com/edm"  # EDM README, pretrained models and FID reference statistics
_SID = "https://huggingface.co/UT-Austin-PML/SiD/resolve/main"  # SiD README, released CIFAR-10 generators

# sha256=None: NVIDIA publishes no checksums for these (EDM README); pinned in SHA256SUMS on first use.
register_asset(Asset("teacher_uncond", "edm-cifar10-32x32-uncond-vp.pkl", (f"{_EDM}/pretrained/edm-cifar10-32x32-uncond-vp.pkl",),
           "edm_pickle", "EDM teacher, CIFAR-10 unconditional, VP/DDPM++ (FID 1.97 at 35 NFE)",
           params={"label_dim": 0}))
register_asset(Asset("teacher_cond", "edm-cifar10-32x32-cond-vp.pkl", (f"{_EDM}/pretrained/edm-cifar10-32x32-cond-vp.pkl",),
           "edm_pickle", "EDM teacher, CIFAR-10 class-conditional, VP/DDPM++ (FID 1.79 at 35 NFE)",
           params={"label_dim": 10}))
# sha256=None: no published checksum (EDM README); pinned on first use.
register_asset(Asset("fid_ref", "cifar10-32x32.npz", (f"{_EDM}/fid-refs/cifar10-32x32.npz",),
           "fid_ref", "EDM's FID reference statistics (mu, sigma) of the 50k CIFAR-10 training images"))
# SHA-256: torch hub's convention puts the hash prefix 6726825d in the file name (torch.hub.check_hash), and the
# full value is the one recorded for this file by public projects that pin it (with its size, 95,628,359 bytes);
# pytorch-fid's pt_inception-2015-12-05-6726825d.pth carries the same SHA-256.
register_asset(Asset("inception", "weights-inception-2015-12-05-6726825d.pth",
           ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
            "weights-inception-2015-12-05-6726825d.pth",),
           "inception", "torch-fidelity's Inception-v3 weights (the TF FID graph of 2015-12-05)",
           sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", size=95_628_359,
           # tensors that torch-fidelity's FeatureExtractorInceptionV3 builds: BasicConv2d(3, 32, kernel_size=3)
           # (conv without bias) and nn.Linear(2048, 1008) (torch_fidelity/feature_extractor_inceptionv3.py)
           params={"tensors": {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)}}))
# MD5 c58f...: the checksum torchvision's CIFAR10 class checks (tgz_md5), and its per-file MD5s for an extracted
# directory (train_list, test_list, meta in torchvision/datasets/cifar.py). SHA-256 unknown to the project:
# pinned on first use. Size 170,498,071 bytes: as recorded with that MD5 by public reports of the archive.
register_asset(Asset("cifar10", "cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
           "cifar10", "CIFAR-10 python version (labels of training images for conditional runs)",
           md5="c58f30108f718f92721af3b95e74349a", size=170_498_071,
           params={"train_count": 50000, "test_count": 10000,  # CIFAR-10 page: 5 x 10000 train, 10000 test
                   "member_md5": {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                                  "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                                  "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                                  "data_batch_4": "634d18415352ddfa80567beed471001a",
                                  "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                                  "test_batch": "40351d587109b95175f43aff81a1287e",
                                  "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}}))
# Optional, for calibrating the metric (expected FID ~1.92 uncond / ~1.71 cond, SiD README). sha256=None: the
# Hugging Face page lists none that we could fetch here; pinned on first use. Same pickle format as EDM's.
register_asset(Asset("sid_uncond", "sid-cifar10-uncond-alpha1.2-network-snapshot-1.200000-403968.pkl",
           (f"{_SID}/cifar10-uncond/alpha1.2/network-snapshot-1.200000-403968.pkl",),
           "edm_pickle", "SiD's released one-step generator, CIFAR-10 unconditional, alpha 1.2",
           params={"label_dim": 0}, optional=True))
register_asset(Asset("sid_cond", "sid-cifar10-cond-alpha1.2-network-snapshot-1.200000-713312.pkl",
           (f"{_SID}/cifar10-cond/alpha1.2/network-snapshot-1.200000-713312.pkl",),
           "edm_pickle", "SiD's released one-step generator, CIFAR-10 class-conditional, alpha 1.2",
           params={"label_dim": 10}, optional=True))


def _conditioning(label_dim) -> str:
    return "unconditional" if label_dim == 0 else f"class-conditional, label_dim {label_dim}"


@VALIDATORS.register("edm_pickle")
def validate_edm_pickle(path: Path, asset: Asset) -> None:
    """NVIDIA's persistent-class pickle (EDM teacher or SiD snapshot) with the expected label_dim."""
    from sim_core.testbeds.cifar10.edm_pickle import inspect_edm_pickle
    info = inspect_edm_pickle(path)
    want, got = asset.params.get("label_dim"), info.get("label_dim")
    if want is not None and got != want:
        raise CheckpointError(f"asset {asset.name}: {path} is a {_conditioning(got)} EDM pickle, expected "
                              f"{_conditioning(want)}; check asset_files.paths.{asset.name}")


@VALIDATORS.register("fid_ref")
def validate_fid_ref(path: Path, asset: Asset) -> None:
    """EDM's reference statistics (npz with mu, sigma), as the FID code will read them."""
    from sim_core.testbeds.cifar10.image_metrics import load_reference_stats
    load_reference_stats(path)


@VALIDATORS.register("inception")
def validate_inception(path: Path, asset: Asset) -> None:
    """A state dict of tensors (loaded with weights_only=True: no code runs) holding the expected tensors."""
    import torch
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"asset {asset.name}: {path} is not a torch state dict: {first_line(e)}") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"asset {asset.name}: {path} holds a {type(sd).__name__}, not a state dict of tensors")
    for key, shape in asset.params.get("tensors", {}).items():
        if key not in sd or tuple(sd[key].shape) != tuple(shape):
            found = tuple(sd[key].shape) if key in sd else "missing"
            raise CheckpointError(f"asset {asset.name}: {path} tensor {key} is {found}, expected {tuple(shape)}; "
                                  "not torch-fidelity's Inception-v3 weights")


@VALIDATORS.register("cifar10")
def validate_cifar10(path: Path, asset: Asset) -> None:
    """The archive (or extracted directory) opens and holds the expected train/test image counts."""
    from sim_core.testbeds.cifar10.data import load_cifar10_splits
    load_cifar10_splits(path, ("train", "test"), {"train": asset.params.get("train_count", 50000),
                                                  "test": asset.params.get("test_count", 10000)})


@DIRECTORY_CHECKS.register("cifar10")
def check_cifar10_directory(asset: Asset, path: Path) -> int:
    """An extracted cifar-10-batches-py/ in place of the archive: torchvision's per-file MD5s; its total size."""
    from sim_core.testbeds.cifar10.data import find_batch_dir
    d, total = find_batch_dir(path), 0
    for member, expected in asset.params.get("member_md5", {}).items():
        f = d / member
        if not f.is_file():
            raise CheckpointError(f"asset {asset.name}: {f} not found; the directory is incomplete")
        _, md5, size = file_digests(f, md5=True)
        total += size
        if md5 != expected:
            raise CheckpointError(f"asset {asset.name}: {f} has MD5 {md5}, expected {expected} (the manifest)")
    return total
