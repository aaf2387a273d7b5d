"""Where prompts come from: a text file (one prompt per line), COCO-2017's captions_val2017.json (one caption per
image, chosen by a named rule), or a SAM-LLaVA-Captions10M webdataset tar (one ``<key>.txt`` per SA-1B image).
Each source returns :class:`Prompt` records in a fixed order; a missing, empty or malformed file is one
ConfigError line naming it."""
from __future__ import annotations

import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from sim_core.errors import ConfigError

# Which caption of a COCO image: the paper (and Hyper-SD's "COCO-5k" protocol it follows) does not say.
# "lowest_id": the annotation with the smallest id (the first one written); "seeded": one drawn with `seed`.
CAPTION_RULES = ("lowest_id", "seeded")


@dataclass(frozen=True)
class Prompt:
    key: str   # the source's own id: line number, COCO image id, webdataset __key__
    text: str


def _text(path, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist or is not a file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not UTF-8 text") from None


def text_file(path) -> list[Prompt]:
    """One prompt per line; blank lines are skipped, surrounding whitespace stripped."""
    lines = _text(path, "prompt file").splitlines()
    prompts = [Prompt(str(i + 1), line.strip()) for i, line in enumerate(lines) if line.strip()]
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompt")
    return prompts


def coco_captions(path, rule: str = "lowest_id", seed: int = 0) -> list[Prompt]:
    """One caption per image of a COCO captions file, images in increasing id; every image must have one."""
    if rule not in CAPTION_RULES:
        raise ConfigError(f"caption rule {rule!r} is not one of {', '.join(CAPTION_RULES)}")
    try:
        data = json.loads(_text(path, "COCO captions file"))
        images = sorted({int(im["id"]) for im in data["images"]})
        by_image: dict[int, list[tuple[int, str]]] = {}
        for a in data["annotations"]:
            by_image.setdefault(int(a["image_id"]), []).append((int(a["id"]), str(a["caption"]).strip()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"COCO captions file {path} is not JSON ({e.msg}, line {e.lineno})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"COCO captions file {path} lacks COCO's images/annotations layout ({e!r})") from None
    missing = [i for i in images if i not in by_image]
    if not images or missing:
        raise ConfigError(f"COCO captions file {path}: " + (f"{len(missing)} images without a caption (first: "
                                                             f"{missing[0]})" if images else "no images"))
    rng = random.Random(seed)
    out = []
    for i in images:
        caps = sorted(by_image[i])
        out.append(Prompt(str(i), caps[0][1] if rule == "lowest_id" else rng.choice(caps)[1]))
    return out


def sam_llava_tar(path, limit: int | None = None) -> list[Prompt]:
    """The ``.txt`` members of a webdataset tar (plain or gzipped), in the tar's order, keyed by ``__key__`` (the
    member name without its extension)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"caption tar {p} does not exist or is not a file")
    out = []
    try:
        with tarfile.open(p, "r:*") as tar:
            for member in tar:
                if not (member.isfile() and member.name.endswith(".txt")):
                    continue
                text = tar.extractfile(member).read().decode("utf-8").strip()
                if text:
                    out.append(Prompt(member.name[:-len(".txt")], text))
                if limit is not None and len(out) >= limit:
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConfigError(f"caption tar {p} cannot be read as a tar ({str(e).splitlines()[0][:120]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"caption tar {p} holds a .txt member that is not UTF-8") from None
    if not out:
        raise ConfigError(f"caption tar {p} holds no .txt caption")
    return out


SOURCES = {"text": text_file, "coco": coco_captions, "sam_llava": sam_llava_tar}


def load_prompts(kind: str, path, **kwargs) -> list[Prompt]:
    if kind not in SOURCES:
        raise ConfigError(f"prompt source {kind!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[kind](path, **kwargs)
