"""Inception-v3 features for CIFAR-10 FID / IS at paper scale, through torch-fidelity's TF-compatible network.

The reference code (EDM fid.py; SiD/DI metrics/*_metric_utils.py) runs NVIDIA's TorchScript/pickle translation of
TensorFlow's inception-2015-12-05 graph; torch-fidelity's 'inception-v3-compat' is another translation of that same
graph (docs/reference-code.md#fid-and-is-protocols). Small numerical differences from NVIDIA's file are expected, so one
extractor is used for every number the harness reports.

Nothing here downloads: the weights file is a local path, its SHA-256 is checked before it is read, and a missing
or wrong file fails with one line naming the path and the URL to fetch it from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from sim_core.errors import CheckpointError
from sim_core.files import check_file

# torch-fidelity 0.4.0, feature_extractor_inceptionv3.py: URL_INCEPTION_V3 (the weights its extractor downloads).
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registered name of this extractor
# pool3 (2048-d, the FID features: EDM fid.py feature_dim = 2048, `return_features=True`) and the 1008 logits
# without the output bias (the IS input: SiD/DI metrics/*_inception_score.py use `no_output_bias=True`).
FEATURES = ("2048", "logits_unbiased")
POOL3_DIM = 2048
LOGITS_DIM = 1008
DEFAULT_BATCH = 64  # EDM fid.py --batch default and SiD metric_utils batch_size; results do not depend on it


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 exactly as the reference code: EDM generate.py and SiD/DI
    metric_utils.run_generator write ``(x * 127.5 + 128).clip(0, 255).to(torch.uint8)``.

    The cast truncates toward zero, so -1 -> 0.5 -> 0, 0 -> 128 and 1 -> 255.5 -> 255 (after the clip). The
    arithmetic is done in x's own dtype, as in the reference. Non-finite values (a diverged generator) are an
    error: the cast would turn them into arbitrary bytes.
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"quantize expects a floating-point tensor in [-1, 1], got {getattr(x, 'dtype', type(x))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"quantize: generator output of shape {tuple(x.shape)} contains NaN or inf")
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def check_images_uint8(images, who: str = "images") -> torch.Tensor:
    """A (N, 3, H, W) uint8 tensor, or a one-line ValueError saying what was given."""
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        desc = (f"{images.dtype} tensor of shape {tuple(images.shape)}" if torch.is_tensor(images)
                else type(images).__name__)
        raise ValueError(f"{who} must be a uint8 tensor of shape (N, 3, H, W) "
                         f"(use sim_core.testbeds.cifar10.inception.quantize); got a {desc}")
    return images


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(part.strip() for part in str(e).strip().splitlines() if part.strip()) or type(e).__name__
    return text[:limit]


def _fetch_hint(path) -> str:
    return f"download {INCEPTION_URL} (SHA-256 {INCEPTION_SHA256[:16]}...) and pass its local path"


class InceptionFeatures:
    """torch-fidelity's FeatureExtractorInceptionV3 ('inception-v3-compat', features '2048' and
    'logits_unbiased') with its weights read from a local file.

    ``sha256`` pins the file (default: torch-fidelity's published file); ``None`` skips the check (tests with
    their own random weights). The file is checked and read in this order, each failure one CheckpointError line:
    exists -> SHA-256 -> loads as a plain tensor dict (``weights_only=True``, so no code runs) -> matches the
    network's parameter names and shapes.

    ``allow_tf32`` (CUDA only): PyTorch runs cuDNN convolutions in TF32 by default on Ampere and later GPUs, and EDM
    fid.py leaves that default; SiD's training loop turns TF32 off (`allow_tf32=False`,
    docs/reference-code.md#sids-loop) and computes its in-training FIDs in that process. The default False computes the
    features in full fp32, the same on every device; the global flags are restored after each call.
    """

    def __init__(self, weights_path, sha256: Optional[str] = INCEPTION_SHA256, device="cpu",
                 allow_tf32: bool = False):
        path = Path(weights_path)
        actual = check_file(path, "Inception weights", sha256, _fetch_hint(path), compute=True)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, garbage bytes, a pickle with code in it
            raise CheckpointError(f"Inception weights {path} are corrupt or not a torch state dict "
                                  f"({_one_line(e, 200)}); {_fetch_hint(path)}") from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise CheckpointError(f"Inception weights {path} hold a {type(state).__name__}, not a state dict of "
                                  f"tensors; {_fetch_hint(path)}")
        del state
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        try:
            # The extractor reads the same file again with torch.load (no map_location); the published file holds
            # CPU tensors (torch-fidelity's own download path loads it the same way on CPU-only machines).
            net = FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(FEATURES),
                                              feature_extractor_weights_path=str(path))
        except Exception as e:  # strict load_state_dict: missing/unexpected keys, size mismatches
            raise CheckpointError(f"Inception weights {path} do not fit torch-fidelity's InceptionV3: "
                                  f"{_one_line(e)}") from None
        self.path = path
        self.sha256 = actual
        self.device = torch.device(device)
        self.allow_tf32 = bool(allow_tf32)
        self.net = net.to(self.device).eval().requires_grad_(False)

    @property
    def dims(self) -> tuple[int, int]:
        return POOL3_DIM, LOGITS_DIM

    def features(self, images_uint8: torch.Tensor, batch_size: int = DEFAULT_BATCH):
        """(N, 3, H, W) uint8 -> (pool3 float64 (N, 2048), logits_unbiased float64 (N, 1008)), on the CPU.

        The network resizes to 299x299 itself (TF1-compatible bilinear), as NVIDIA's detector does.
        """
        images = check_images_uint8(images_uint8)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pools, logits = [], []
        flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        try:
            if self.device.type == "cuda":
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
            with torch.inference_mode():
                for chunk in images.split(int(batch_size)):
                    pool, logit = self.net(chunk.to(self.device))
                    pools.append(pool.to(torch.float64).cpu())   # float64 as EDM fid.py `.to(torch.float64)`
                    logits.append(logit.to(torch.float64).cpu())
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        if not pools:
            return torch.zeros(0, POOL3_DIM, dtype=torch.float64), torch.zeros(0, LOGITS_DIM, dtype=torch.float64)
        return torch.cat(pools), torch.cat(logits)

    __call__ = features
