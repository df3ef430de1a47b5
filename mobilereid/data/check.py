"""`mobilereid data check` (also the pipeline's first look at its data): identities, images and cameras per
split, every image decoded, problems as warnings or one-line errors."""

from __future__ import annotations

from pathlib import Path

from ..console import console, progress, table


def check_and_print(root: Path, images: bool = True, merge_val: bool = True):
    from .datasets import check_dataset, load_dataset, split_stats, verify_images

    ds = load_dataset(root, merge_val=merge_val)
    if images:
        n = sum(len(v) for v in ds.splits().values())
        with progress("decoding images", n) as advance:
            for samples in ds.splits().values():
                verify_images(samples, on_step=advance)
    warnings = check_dataset(ds)
    rows = []
    for split, samples in ds.splits().items():
        st = split_stats(samples)
        rows.append([split, st["identities"], st["images"], st["cameras"], st["distractors"], ds.skipped.get(split, 0)])
    console.print(
        table(
            f"{root} ({ds.layout} layout)",
            ["split", "identities", "images", "cameras", "distractors (pid 0)", "junk skipped (pid -1)"],
            rows,
        )
    )
    for w in warnings:
        console.print(f"warning: {w}")
    console.print("ok" + (" (images decoded)" if images else " (images not decoded)"))
    return ds
