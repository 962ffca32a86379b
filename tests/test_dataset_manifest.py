"""Dataset manifests: CSV, JSONL and folder trees load the same way; every problem is reported
at once, each with its line and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.data.manifest import DatasetError, load_manifest

HEADER = "path,label,source_id,split,manipulation"


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def write_csv(root: Path, *rows: str, header: str = HEADER) -> Path:
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join([header, *rows]) + "\n")
    return manifest


@pytest.fixture()
def media(tmp_path: Path) -> Path:
    touch(tmp_path, "v/a.mp4", "v/a_fake.mp4", "v/b.mp4", "v/b_fake.mp4", "v/c.mp4")
    frames = tmp_path / "frames" / "c_fake"
    frames.mkdir(parents=True)
    (frames / "000.png").write_bytes(b"")
    return tmp_path


def problems(excinfo: pytest.ExceptionInfo[DatasetError]) -> list[str]:
    return excinfo.value.problems


def test_csv_loads_with_pairs_and_counts(media: Path) -> None:
    manifest = write_csv(
        media,
        "v/a.mp4,real,a,train,",
        "v/a_fake.mp4,fake,a,train,swap-blend",
        "v/b.mp4,real,b,val,",
        "v/b_fake.mp4,fake,b,val,swap-blur",
        f"{media / 'v/c.mp4'},Real,,test,",  # absolute path; empty source_id -> its own id
        "frames/c_fake,fake,v/c,test,swap-blend",  # a folder of frames
    )
    data = load_manifest(manifest)
    assert [e.id for e in data] == ["v/a", "v/a_fake", "v/b", "v/b_fake", "v/c", "frames/c_fake"]
    assert data.entries[4].source_id == "v/c" and data.entries[4].label == "real"
    assert data.entries[0].path == media / "v/a.mp4"
    assert [e.id for e in data.by_split("val")] == ["v/b", "v/b_fake"]
    assert [(f.id, r.id) for f, r in data.pairs()] == [
        ("v/a_fake", "v/a"), ("v/b_fake", "v/b"), ("frames/c_fake", "v/c")]
    assert [(f.id, r.id) for f, r in data.pairs("test")] == [("frames/c_fake", "v/c")]
    assert data.counts() == {"train": {"real": 1, "fake": 1}, "val": {"real": 1, "fake": 1},
                             "test": {"real": 1, "fake": 1}}
    assert data.manipulations() == {"swap-blend": 2, "swap-blur": 1}
    assert load_manifest(media).entries == data.entries  # a folder with manifest.csv


def test_jsonl_loads_like_csv(media: Path) -> None:
    manifest = media / "data.jsonl"
    lines = [
        {"path": "v/a.mp4", "label": "real", "source_id": "a", "split": "train"},
        {"path": "v/a_fake.mp4", "label": "fake", "source_id": "a", "split": "train",
         "manipulation": "swap-colour"},
    ]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    data = load_manifest(manifest)
    assert [(e.id, e.label, e.source_id, e.manipulation) for e in data] == [
        ("v/a", "real", "a", ""), ("v/a_fake", "fake", "a", "swap-colour")]


def test_folder_tree(tmp_path: Path) -> None:
    touch(tmp_path, "train/real/s1.mp4", "train/fake/s1__swap.mp4", "train/fake/loose.mp4",
          "test/real/s2.mp4", "test/fake/s2__x.avi", "test/fake/notes.txt")
    data = load_manifest(tmp_path)
    assert {e.id: (e.label, e.source_id, e.split) for e in data} == {
        "train/real/s1": ("real", "s1", "train"),
        "train/fake/s1__swap": ("fake", "s1", "train"),
        "train/fake/loose": ("fake", "", "train"),
        "test/real/s2": ("real", "s2", "test"),
        "test/fake/s2__x": ("fake", "s2", "test"),
    }
    assert len(data.pairs()) == 2


def test_every_problem_is_reported_with_its_line(media: Path) -> None:
    manifest = write_csv(
        media,
        "v/a.mp4,real,a,train,",         # line 2: fine
        "v/missing.mp4,real,m,train,",   # line 3: missing file
        "v/b.mp4,fak,b,train,",          # line 4: unknown label
        "v/c.mp4,real,c,dev,",           # line 5: unknown split
        "v/a.mp4,real,a2,train,",        # line 6: duplicate path
        "v/a_fake.mp4,fake,zzz,train,",  # line 7: source names no real
        "v/b_fake.mp4,fake,a,test,",     # line 8: source in another split
        "v/d.mp4,real,a,train,",         # line 9: missing and duplicate source_id
    )
    with pytest.raises(DatasetError) as excinfo:
        load_manifest(manifest)
    found = problems(excinfo)
    expected = [
        ("line 3", "does not exist"), ("line 4", "unknown label 'fak'"),
        ("line 5", "unknown split 'dev'"), ("line 6", "duplicate path v/a.mp4"),
        ("line 7", "no real video"), ("line 8", "split leaks"),
        ("line 9", "does not exist"), ("line 9", "source_id 'a' is already"),
    ]
    for line, text in expected:
        assert any(p.startswith(line + ":") and text in p for p in found), (line, text, found)
    assert len(found) == len(expected), found
    assert str(manifest) in str(excinfo.value) and "8 problem(s)" in str(excinfo.value)
    assert all(";" in p for p in found), "each problem says how to fix it"


def test_missing_columns_and_empty_manifests(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"line 1: missing column\(s\) source_id, split"):
        load_manifest(write_csv(tmp_path, "a.mp4,real", header="path,label"))
    with pytest.raises(DatasetError, match="empty"):
        load_manifest(write_csv(tmp_path))
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "a.mp4", "label": "real"}\nnot json\n[1]\n')
    with pytest.raises(DatasetError) as excinfo:
        load_manifest(jsonl)
    found = problems(excinfo)
    assert found[0].startswith("line 1: missing column(s) source_id, split")
    assert found[1].startswith("line 2: not JSON") and found[2].startswith("line 3: not a JSON")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        load_manifest(empty)


def test_bad_locations(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="no train/val/test folder"):
        load_manifest(tmp_path)
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(DatasetError, match="unknown manifest type"):
        load_manifest(tmp_path / "m.txt")
    (tmp_path / "frames").mkdir()
    with pytest.raises(DatasetError, match=r"line 2: folder .* holds no frame images"):
        load_manifest(write_csv(tmp_path, "frames,real,f,train,"))


def test_ids_are_unique(media: Path) -> None:
    touch(media, "v/a.avi")
    with pytest.raises(DatasetError, match="line 3: id 'v/a' is already used at line 2"):
        load_manifest(write_csv(media, "v/a.mp4,real,a,train,", "v/a.avi,real,a2,train,"))


def test_the_synthetic_column_marks_generated_videos(media: Path) -> None:
    header = HEADER + ",synthetic"
    data = load_manifest(write_csv(media, "v/a.mp4,real,a,train,,1", "v/a_fake.mp4,fake,a,train,"
                                   "swap-blend,true", header=header))
    assert data.synthetic and all(e.synthetic for e in data)
    camera = load_manifest(write_csv(media, "v/a.mp4,real,a,train,,0", "v/b.mp4,real,b,val,,",
                                     header=header))
    assert not camera.synthetic
    with pytest.raises(DatasetError) as excinfo:
        load_manifest(write_csv(media, "v/a.mp4,real,a,train,,maybe", header=header))
    assert problems(excinfo) == ["line 2: synthetic is 'maybe'; write 1 (made by a generator) "
                                 "or 0 (camera footage), or leave it empty"]
