"""Readers for ReID datasets in the layouts people download them in (REFERENCE.md section 6).

* Market-1501 layout (Market-1501, DukeMTMC-reID, Occluded-Duke and the synthetic set this kit generates):
  ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` holding images named ``PPPP_cC...``
  (``0002_c1s1_000451_03.jpg``, Duke: ``0005_c2_f0046985.jpg``).
* MSMT17 (V1/V2): ``train/``, ``test/`` and the list files ``list_train.txt``, ``list_val.txt``,
  ``list_query.txt``, ``list_gallery.txt`` (lines ``relative/path.jpg PID``); the camera is the third
  ``_``-separated field of the file name. Like torchreid and TransReID, the validation list is **merged into
  train** by default (``merge_val=True``), so train has 32,621 images; pass ``merge_val=False`` to keep them apart.

Conventions: pid -1 images are junk and are skipped everywhere; pid 0 ("0000", distractors) is kept in the
gallery only, as a non-matching identity; camera ids become 0-based. Only ``.jpg``, ``.jpeg`` and ``.png``
files are read (Market-1501 ships ``Thumbs.db`` files in its folders).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MSMT_LISTS = {
    "train": "list_train.txt",
    "val": "list_val.txt",
    "query": "list_query.txt",
    "gallery": "list_gallery.txt",
}
_NAME = re.compile(r"^(-?\d+)_c(\d+)")


@dataclass(frozen=True)
class Sample:
    path: Path
    pid: int
    camid: int  # 0-based


@dataclass
class ReIDDataset:
    root: Path
    layout: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    skipped: dict = field(default_factory=dict)  # split -> number of junk (-1) images skipped

    def splits(self) -> dict[str, list[Sample]]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}

    @property
    def num_train_ids(self) -> int:
        return len({s.pid for s in self.train})

    def train_labels(self) -> dict[int, int]:
        """Raw train pid -> contiguous class index 0..N-1 (sorted by pid)."""
        return {pid: i for i, pid in enumerate(sorted({s.pid for s in self.train}))}


def parse_market_name(path: Path) -> tuple[int, int]:
    """``0002_c1s1_000451_03.jpg`` -> (pid 2, camid 0); raises DatasetError naming the file."""
    m = _NAME.match(path.name)
    if not m:
        raise DatasetError(f"{path}: file name does not follow PPPP_cC... (person id, underscore, 'c', camera number)")
    pid, cam = int(m.group(1)), int(m.group(2))
    if pid < -1 or cam < 1:
        raise DatasetError(f"{path}: person id {pid} or camera {cam} out of range (pid >= -1, camera >= 1)")
    return pid, cam - 1


def _keep(pid: int, split: str) -> bool:
    if pid == -1:
        return False
    return pid != 0 or split == "gallery"


def _read_market_split(folder: Path, split: str) -> tuple[list[Sample], int]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    samples, junk = [], 0
    for p in files:
        pid, camid = parse_market_name(p)
        if _keep(pid, split):
            samples.append(Sample(p, pid, camid))
        else:
            junk += 1
    return samples, junk


def _read_msmt_list(root: Path, list_file: Path, image_dir: Path, split: str) -> tuple[list[Sample], int]:
    samples, junk = [], 0
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            rel, pid = parts[0], int(parts[1])
            camid = int(Path(rel).name.split("_")[2]) - 1
        except (IndexError, ValueError):
            raise DatasetError(
                f"{list_file}:{lineno}: expected 'path/PPPP_SSS_CC_....jpg PID', got {line.strip()!r}"
            ) from None
        if _keep(pid, split):
            samples.append(Sample(image_dir / rel, pid, camid))
        else:
            junk += 1
    return samples, junk


def load_dataset(root: str | Path, merge_val: bool = True, need_train: bool = True) -> ReIDDataset:
    """Read a dataset folder (Market-1501 layout or MSMT17 list layout) without opening any image.

    ``need_train=False`` (evaluation only) accepts a dataset without a train split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    splits: dict[str, list[Sample]] = {}
    skipped: dict[str, int] = {}
    if (root / MSMT_LISTS["train"]).is_file():
        layout = "msmt17"
        for name in ("train", "test"):
            if not (root / name).is_dir():
                raise DatasetError(f"{root}: missing split folder '{name}/' (MSMT17 layout: train/, test/, list_*.txt)")
        wanted = {"train": "train", "query": "test", "gallery": "test"}
        if merge_val:
            wanted["val"] = "train"
        for split, image_dir in wanted.items():
            list_file = root / MSMT_LISTS[split]
            if not list_file.is_file():
                raise DatasetError(f"{list_file}: missing MSMT17 list file")
            splits[split], skipped[split] = _read_msmt_list(root, list_file, root / image_dir, split)
        if merge_val:
            splits["train"] = splits["train"] + splits.pop("val")
            skipped["train"] += skipped.pop("val")
    else:
        layout = "market1501"
        for split, folder in MARKET_SPLITS.items():
            if split == "train" and not need_train and not (root / folder).is_dir():
                continue
            if not (root / folder).is_dir():
                raise DatasetError(
                    f"{root}: missing split folder '{folder}/' "
                    "(Market-1501 layout: bounding_box_train/, query/, bounding_box_test/)"
                )
        for split, folder in MARKET_SPLITS.items():
            if (root / folder).is_dir():
                splits[split], skipped[split] = _read_market_split(root / folder, split)
            else:
                splits[split], skipped[split] = [], 0
    for split, samples in splits.items():
        if not samples and (need_train or split != "train"):
            where = root / MARKET_SPLITS[split] if layout == "market1501" else root / MSMT_LISTS[split]
            raise DatasetError(f"{where}: split '{split}' holds no usable images")
    return ReIDDataset(root, layout, splits["train"], splits["query"], splits["gallery"], skipped)


def verify_images(samples: Iterable[Sample], on_step: Callable[[], None] | None = None) -> None:
    """Open and fully decode every image; raises DatasetError naming the first unreadable or truncated file."""
    from PIL import Image

    for s in samples:
        if not s.path.is_file():
            raise DatasetError(f"{s.path}: image file listed but missing")
        try:
            with Image.open(s.path) as im:
                im.load()
        except Exception as exc:
            raise DatasetError(f"{s.path}: unreadable or truncated image ({exc})") from None
        if on_step:
            on_step()


def split_stats(samples: list[Sample]) -> dict:
    pids = {s.pid for s in samples}
    return {
        "identities": len(pids - {0}),
        "images": len(samples),
        "cameras": len({s.camid for s in samples}),
        "distractors": sum(1 for s in samples if s.pid == 0),
    }


def check_dataset(ds: ReIDDataset) -> list[str]:
    """Protocol-level problems that do not stop reading but make results meaningless; returns warnings."""
    warnings = []
    gallery = {(s.pid, s.camid) for s in ds.gallery}
    gallery_pids_cams: dict[int, set[int]] = {}
    for pid, cam in gallery:
        gallery_pids_cams.setdefault(pid, set()).add(cam)
    no_match = sum(1 for s in ds.query if not (gallery_pids_cams.get(s.pid, set()) - {s.camid}))
    if no_match == len(ds.query):
        raise DatasetError(f"{ds.root}: no query has a match in the gallery from another camera; nothing can be scored")
    if no_match:
        warnings.append(
            f"{no_match} of {len(ds.query)} queries have no cross-camera match in the gallery (skipped when scoring)"
        )
    overlap = {s.pid for s in ds.train} & ({s.pid for s in ds.query} - {0})
    if overlap:
        warnings.append(f"{len(overlap)} identities appear in both train and query (test identities should be unseen)")
    return warnings
