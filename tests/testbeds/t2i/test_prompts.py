"""The three prompt sources on small files in their real formats (tests/fixtures/t2i/), and their bad input."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from sim_core.errors import ConfigError
from sim_core.testbeds.t2i.prompts import Prompt, load_prompts

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "t2i"


def test_a_text_file_gives_its_non_blank_lines_stripped():
    assert load_prompts("text", FIXTURES / "prompts.txt") == [
        Prompt("1", "a handwritten digit seven"), Prompt("3", "the number 3 written by hand"),
        Prompt("4", "an eight, drawn in ink")]


def test_coco_gives_one_caption_per_image_by_the_named_rule():
    got = load_prompts("coco", FIXTURES / "captions_val2017_mini.json")
    assert got == [Prompt("139", "A room with chairs, a table and a woman in it."),        # annotation id 4
                   Prompt("285", "A large bear sits on green grass."),                     # id 2900 < 3004
                   Prompt("632", "A bedroom with a bed and a bookshelf.")]                 # id 1990 < 5512
    seeded = [load_prompts("coco", FIXTURES / "captions_val2017_mini.json", rule="seeded", seed=s) for s in range(8)]
    assert all([p.key for p in run] == ["139", "285", "632"] for run in seeded)
    assert seeded[3] == load_prompts("coco", FIXTURES / "captions_val2017_mini.json", rule="seeded", seed=3)
    assert len({tuple(p.text for p in run) for run in seeded}) > 1  # the seed does choose
    captions = {a["caption"].strip() for a in json.loads((FIXTURES / "captions_val2017_mini.json").read_text())
                ["annotations"]}
    assert all(p.text in captions for run in seeded for p in run)


def test_a_webdataset_tar_gives_its_txt_members_plain_or_gzipped(tmp_path):
    expected = [Prompt("sa_1000", "The image shows a red bicycle leaning against a brick wall on a quiet street."),
                Prompt("sa_1001", "A bowl of green apples on a wooden table, lit by a window."),
                Prompt("sa_1002", "An aerial view of a harbour with small boats and a lighthouse.")]
    assert load_prompts("sam_llava", FIXTURES / "sam_llava_mini.tar") == expected
    gz = tmp_path / "SA1B_caption.tar.gz"
    with open(FIXTURES / "sam_llava_mini.tar", "rb") as f, gzip.open(gz, "wb") as g:
        shutil.copyfileobj(f, g)
    assert load_prompts("sam_llava", gz, limit=2) == expected[:2]


def _write(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


BAD = [
    ("text", lambda t: t / "nope.txt", {}, "prompt file .*nope.txt does not exist or is not a file"),
    ("text", lambda t: _write(t, "empty.txt", b"\n  \n"), {}, "prompt file .*empty.txt holds no prompt"),
    ("text", lambda t: _write(t, "bin.txt", b"\xff\xfe\x00garbage"), {}, "prompt file .*bin.txt is not UTF-8 text"),
    ("coco", lambda t: _write(t, "c.json", b"{not json"), {}, "is not JSON"),
    ("coco", lambda t: _write(t, "c.json", b'{"images": []}'), {}, "lacks COCO's images/annotations layout"),
    ("coco", lambda t: _write(t, "c.json", b'{"images": [], "annotations": []}'), {}, "no images"),
    ("coco", lambda t: _write(t, "c.json", json.dumps({"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"image_id": 1, "id": 1, "caption": "x"}]}).encode()), {}, "1 images without a caption \\(first: 2\\)"),
    ("coco", lambda t: FIXTURES / "captions_val2017_mini.json", {"rule": "random"},
     "caption rule 'random' is not one of lowest_id, seeded"),
    ("sam_llava", lambda t: _write(t, "x.tar", b"this is no tar"), {}, "cannot be read as a tar"),
    ("sam_llava", lambda t: t / "missing.tar", {}, "caption tar .*missing.tar does not exist"),
    ("parquet", lambda t: FIXTURES / "prompts.txt", {}, "prompt source 'parquet' is not one of text, coco, sam_llava"),
]


@pytest.mark.parametrize("kind,make,kwargs,message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_prompt_input_is_one_line(tmp_path, kind, make, kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_prompts(kind, make(tmp_path), **kwargs)
    assert "\n" not in str(e.value)


def test_a_tar_without_captions_is_refused(tmp_path):
    import io
    import tarfile
    p = tmp_path / "only_json.tar"
    with tarfile.open(p, "w") as tar:
        info = tarfile.TarInfo("sa_1.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ConfigError, match="holds no .txt caption"):
        load_prompts("sam_llava", p)
