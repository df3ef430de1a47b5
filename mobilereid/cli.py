"""The `mobilereid` command line: parse, call the library, print tables, progress and plot paths.

Every user-fixable problem surfaces as a MobileReIDError, printed as one line with a non-zero exit status.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .console import console, err_console, progress, table
from .errors import MobileReIDError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Person ReID models made small, fast and verified for phones, boards and microcontrollers.")
data_app = typer.Typer(no_args_is_help=True, help="Make and check datasets (Market-1501 layout, MSMT17 lists, synthetic).")
app.add_typer(data_app, name="data")


def user_errors(fn):
    """Turn user-fixable errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MobileReIDError, FileExistsError, FileNotFoundError) as exc:
            err_console.print(f"error: {exc}", markup=False)
            raise typer.Exit(2)

    return wrapper


def _version(value: bool):
    if value:
        console.print(f"mobilereid {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit.")):
    """mobilereid: train, compress, quantize, export and evaluate person ReID models for edge devices."""


@data_app.command("synth")
@user_errors
def data_synth(
    out: Path = typer.Argument(..., help="Output folder (must not exist or be empty)."),
    ids: int = typer.Option(100, help="Number of identities (half train, half test)."),
    cameras: int = typer.Option(6, help="Number of cameras."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives byte-identical files."),
    height: int = typer.Option(256, help="Image height in pixels."),
    width: int = typer.Option(128, help="Image width in pixels."),
):
    """Generate a synthetic ReID dataset in the Market-1501 layout."""
    from .data.synth import SynthConfig, generate, plan

    cfg = SynthConfig(ids=ids, cameras=cameras, seed=seed, height=height, width=width)
    try:
        total = len(plan(cfg))
    except ValueError as exc:
        raise MobileReIDError(str(exc)) from None
    t0 = time.perf_counter()
    with progress(f"synthesising {total} images", total) as advance:
        generate(out, cfg, on_step=advance)
    console.print(f"wrote {total} images to {out} in {time.perf_counter() - t0:.1f} s")


@data_app.command("check")
@user_errors
def data_check(
    root: Path = typer.Argument(..., help="Dataset folder (Market-1501 layout or MSMT17 with list files)."),
    images: bool = typer.Option(True, help="Decode every image to find unreadable or truncated files."),
    merge_val: bool = typer.Option(True, help="MSMT17: merge list_val.txt into train (as torchreid and TransReID do)."),
):
    """Print identities, images and cameras per split, and validate file names and images."""
    check_and_print(root, images, merge_val)


def check_and_print(root: Path, images: bool = True, merge_val: bool = True):
    from .data.datasets import check_dataset, load_dataset, split_stats, verify_images

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
    console.print(table(f"{root} ({ds.layout} layout)", ["split", "identities", "images", "cameras", "distractors (pid 0)", "junk skipped (pid -1)"], rows))
    for w in warnings:
        console.print(f"warning: {w}")
    console.print("ok" + (" (images decoded)" if images else " (images not decoded)"))
    return ds


@app.command("pipeline")
@user_errors
def pipeline(
    config: Optional[Path] = typer.Argument(None, help="Pipeline config (TOML); default: the built-in synthetic run."),
    workdir: Path = typer.Option(Path("runs/default"), "--workdir", "-w", help="Where every stage writes its outputs."),
):
    """Run the whole job: data, train, compress, export, evaluate, report."""
    from .pipeline import run_pipeline

    run_pipeline(config, workdir)


if __name__ == "__main__":
    app()
