"""Build a study folder from two sample files: PNGs under opaque names, study.json, invitations, the database."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import secrets
from pathlib import Path

from sim_core.errors import ConfigError
from sim_core.files import atomic_directory, atomic_write_json, sha256_file

FORMAT = "sim-preference-study"
QUESTION = "Which image better matches the text and has higher quality?"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _load_set(path: Path, what: str) -> tuple[object, list[str]]:
    """The uint8 images and prompts of a sample file as the t2i testbed writes them; one ConfigError line else."""
    import torch  # only the build needs torch; the server never imports it
    if not path.is_file():
        raise ConfigError(f"image set {what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"image set {what} {path} is not a torch file: {first[:160]}") from None
    if not isinstance(obj, dict) or "images" not in obj or "prompts" not in obj:
        raise ConfigError(f"image set {what} {path} lacks 'images' and 'prompts'")
    images, prompts = obj["images"], obj["prompts"]
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] != 3:
        found = f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
        raise ConfigError(f"image set {what} {path}: 'images' must be a uint8 tensor (N,3,H,W), found {found}")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts) or len(prompts) != len(images):
        raise ConfigError(f"image set {what} {path}: 'prompts' must be {len(images)} strings")
    return images, prompts


def _png(image) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def build_study(set_a, set_b, out_dir, label_a: str, label_b: str, n_prompts: int = 17, raters: int = 30,
                seed: int = 0, origin: dict | None = None) -> dict:
    """Write the study folder ``out_dir`` (whole or not at all) and return its study.json content.

    Both sets must hold the same prompts in the same order; ``n_prompts`` of them are drawn with ``seed``.
    ``origin`` ({"a": {...}, "b": {...}}) replaces what study.json says of where each set came from (default: its
    path). Rater and admin tokens are written once, in invitations.csv and admin_token.txt (0600); study.json and the
    database keep only their SHA-256.
    """
    set_a, set_b, out_dir = Path(set_a), Path(set_b), Path(out_dir)
    if not label_a.strip() or not label_b.strip() or label_a == label_b:
        raise ConfigError(f"the labels must be two different names, got {label_a!r} and {label_b!r}")
    if raters < 1 or n_prompts < 1:
        raise ConfigError(f"--raters and --prompts must be at least 1, got {raters} and {n_prompts}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):  # never replace collected answers
        raise ConfigError(f"{out_dir} exists; a study folder is built once (choose a new --out)")
    images_a, prompts_a = _load_set(set_a, "a")
    images_b, prompts_b = _load_set(set_b, "b")
    if prompts_a != prompts_b:
        diff = next((i for i, (x, y) in enumerate(zip(prompts_a, prompts_b)) if x != y), min(len(prompts_a),
                                                                                               len(prompts_b)))
        raise ConfigError(f"the two image sets must hold the same prompts in the same order: {len(prompts_a)} vs "
                          f"{len(prompts_b)} prompts, first difference at index {diff}")
    if n_prompts > len(prompts_a):
        raise ConfigError(f"--prompts {n_prompts} but the sets hold only {len(prompts_a)} prompts")
    chosen = sorted(random.Random(seed).sample(range(len(prompts_a)), n_prompts))

    tokens = [secrets.token_urlsafe(24) for _ in range(raters)]
    admin = secrets.token_urlsafe(24)
    pairs, pngs = [], {}
    for k, i in enumerate(chosen, start=1):
        ids = {}
        for side, images in (("a", images_a), ("b", images_b)):
            ids[side] = secrets.token_hex(16)  # opaque: the name says nothing about the method
            pngs[ids[side]] = _png(images[i])
        pairs.append({"id": k, "index": i, "prompt": prompts_a[i], "image_a": ids["a"], "image_b": ids["b"]})
    study = {
        "format": FORMAT, "version": 1, "study_id": secrets.token_hex(8), "question": QUESTION,
        "label_a": label_a, "label_b": label_b, "seed": seed, "n_prompts": n_prompts, "n_available": len(prompts_a),
        "sources": {side: {**((origin or {}).get(side) or {"path": str(path.resolve())}), "sha256": sha256_file(path)}
                    for side, path in (("a", set_a), ("b", set_b))},
        "pairs": pairs,
        "raters": [{"id": r, "token_sha256": token_hash(t)} for r, t in enumerate(tokens, start=1)],
        "admin_token_sha256": token_hash(admin),
    }
    try:
        with atomic_directory(out_dir, replace=False) as tmp:  # a study another build finished meanwhile stays
            (tmp / "images").mkdir()
            for image_id, data in pngs.items():
                (tmp / "images" / f"{image_id}.png").write_bytes(data)
            atomic_write_json(tmp / "study.json", study)
            _write_secret(tmp / "invitations.csv", _invitations(tokens))
            _write_secret(tmp / "admin_token.txt", admin + "\n")
            from workflow.study.db import init_db, make_engine
            engine = make_engine(f"sqlite:///{tmp / 'answers.db'}")
            init_db(engine, study)
            engine.dispose()  # closes the last connection: SQLite folds the WAL back into answers.db
            for p in tmp.rglob("*"):
                if p.is_file():
                    _fsync(p)
    except FileExistsError:
        raise ConfigError(f"{out_dir} exists; a study folder is built once (choose a new --out)") from None
    return study


def _invitations(tokens: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rater", "token", "path"])
    for r, t in enumerate(tokens, start=1):
        w.writerow([r, t, f"/r/{t}"])
    return buf.getvalue()


def _write_secret(path: Path, text: str) -> None:
    # created 0600 from the start: the token is never readable by others, even for a moment
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
