"""sim_core/files.py's atomic folder: a reader sees the whole folder or none of it."""
from __future__ import annotations

import pytest

from sim_core.files import atomic_directory


def test_a_folder_appears_whole_replaces_the_old_one_and_vanishes_on_failure(tmp_path):
    target = tmp_path / "asset"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "a.txt").read_text() == "1"
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "c.txt").write_text("3")
            raise RuntimeError("killed halfway")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the old one stays
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]  # no temporary or old folder left
