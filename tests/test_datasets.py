import shutil
from pathlib import Path

import pytest

from mobilereid.data.datasets import check_dataset, load_dataset, parse_market_name, verify_images
from mobilereid.data.synth import SynthConfig, generate, plan
from mobilereid.errors import DatasetError, MobileReIDError


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_synthetic_set_loads_with_market_conventions(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert ds.layout == "market1501"
    assert {s.pid for s in ds.train} == set(range(1, 7))
    assert {s.pid for s in ds.query} == set(range(7, 13))
    assert 0 in {s.pid for s in ds.gallery}  # distractors stay in the gallery
    assert all(s.pid != -1 for split in ds.splits().values() for s in split)  # junk skipped
    assert ds.skipped["gallery"] > 0
    assert min(s.camid for s in ds.gallery) == 0  # 0-based cameras
    assert check_dataset(ds) == []
    verify_images(ds.query)
    assert " test_ids=6 " in (Path(tiny_dataset) / "SYNTHETIC.txt").read_text()  # the options are recorded


def test_synthetic_generation_is_deterministic(tmp_path):
    cfg = SynthConfig(ids=4, cameras=2, seed=7, height=48, width=24)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.jpg"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    other = plan(SynthConfig(ids=4, cameras=2, seed=8))
    assert [i[1] for i in other] != [i[1] for i in plan(cfg)]


def test_more_test_identities_leave_the_train_split_as_it_was():
    """--test-ids grows the test split only: the train split's files and render keys are those of the default
    half-and-half set with the same train identities; a split with fewer than 2 identities is refused."""
    default = plan(SynthConfig(ids=8, cameras=3, seed=5))
    grown = plan(SynthConfig(ids=14, test_ids=10, cameras=3, seed=5))
    train = lambda items: [i for i in items if i[0] == "bounding_box_train"]  # noqa: E731
    assert train(grown) == train(default) and len(train(default)) > 0
    test_pids = {i[2][1] for i in grown if i[0] == "query"}
    assert test_pids == set(range(5, 15))
    for ids, test_ids in ((8, 7), (8, 8)):
        with pytest.raises(MobileReIDError, match="2 identities each"):
            plan(SynthConfig(ids=ids, test_ids=test_ids, cameras=3))


def test_synthetic_refuses_non_empty_output(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(tmp_path / "x", SynthConfig(ids=2, cameras=2, height=32, width=16))
    assert (tmp_path / "x" / "f").read_text() == "keep me"


def test_parse_market_name():
    assert parse_market_name(Path("0002_c1s1_000451_03.jpg")) == (2, 0)
    assert parse_market_name(Path("0005_c2_f0046985.jpg")) == (5, 1)  # DukeMTMC-reID style
    assert parse_market_name(Path("-1_c3s2_000001_00.jpg")) == (-1, 2)
    with pytest.raises(DatasetError, match="person.jpg: file name does not follow"):
        parse_market_name(Path("person.jpg"))


def test_missing_split_folder(tiny_dataset, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path / "d")
    shutil.rmtree(root / "query")
    with pytest.raises(DatasetError, match="missing split folder 'query/'"):
        load_dataset(root)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_unparsable_file_name(tiny_dataset, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path / "d")
    (root / "query" / "holiday_photo.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="holiday_photo.jpg: file name does not follow"):
        load_dataset(root)


def test_empty_split(tiny_dataset, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path / "d")
    for f in (root / "bounding_box_train").iterdir():
        f.unlink()
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"")  # non-images are ignored, as in Market-1501
    with pytest.raises(DatasetError, match="split 'train' holds no usable images"):
        load_dataset(root)


def test_truncated_image_is_named(tiny_dataset, tmp_path):
    root = copy_dataset(tiny_dataset, tmp_path / "d")
    victim = sorted((root / "query").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    ds = load_dataset(root)
    with pytest.raises(DatasetError, match=f"{victim.name}: unreadable or truncated image"):
        verify_images(ds.query)


def test_msmt17_lists_with_val_merged(tmp_path, tiny_dataset):
    root = tmp_path / "msmt"
    src = load_dataset(tiny_dataset)
    lines = {}
    for split, samples, image_dir in (
        ("train", src.train[::2], "train"),
        ("val", src.train[1::2], "train"),
        ("query", src.query, "test"),
        ("gallery", src.gallery, "test"),
    ):
        rows = []
        for i, s in enumerate(samples):
            rel = f"{s.pid:04d}/{s.pid:04d}_{i:03d}_{s.camid + 1:02d}_0303morning_{i:04d}_0.jpg"
            (root / image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(s.path, root / image_dir / rel)
            rows.append(f"{rel} {s.pid}")
        lines[split] = rows
        (root / f"list_{split}.txt").write_text("\n".join(rows) + "\n")
    ds = load_dataset(root)
    assert ds.layout == "msmt17"
    assert len(ds.train) == len(src.train)
    assert len(load_dataset(root, merge_val=False).train) == len(src.train[::2])
    assert {s.camid for s in ds.query} == {s.camid for s in src.query}
    verify_images(ds.train)
    (root / "list_query.txt").write_text("garbage-line\n")
    with pytest.raises(DatasetError, match="list_query.txt:1: expected"):
        load_dataset(root)
