"""The `mobilereid` command line: parse, call the library, print tables, progress and plot paths.

Every user-fixable problem surfaces as a MobileReIDError, printed as one line with a non-zero exit status.
"""

from __future__ import annotations

import errno
import functools
import time
from pathlib import Path

import typer

from . import __version__
from .console import console, err_console, progress, table
from .errors import MobileReIDError
from .export.targets import cli_help as target_help
from .options import (
    CompressConfig,
    EvaluateOptions,
    ExportOptions,
    QuantFinetuneConfig,
    SynthOptions,
    TrainConfig,
)
from .settings import cli_options

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Person ReID models made small, fast and verified for phones, boards and microcontrollers.",
)
data_app = typer.Typer(
    no_args_is_help=True, help="Make and check datasets (Market-1501 layout, MSMT17 lists, synthetic)."
)
app.add_typer(data_app, name="data")
board_app = typer.Typer(
    no_args_is_help=True,
    help="Emulated boards for evaluation: `board setup arm64` builds an arm64 root run under qemu-user.",
)
app.add_typer(board_app, name="board")


def user_errors(fn):
    """Turn user-fixable errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _check_threads(fn.__name__, kwargs.get("threads"))
            return fn(*args, **kwargs)
        except (MobileReIDError, FileExistsError, FileNotFoundError) as exc:
            err_console.print(f"error: {exc}", markup=False)
            raise typer.Exit(2) from None
        except OSError as exc:  # a read-only output folder, -o below a regular file, a full disk: name the path
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)  # a library's own write: often no path to name
            if exc.filename is None and not full:
                raise
            where = "" if exc.filename is None else f"{exc.filename}: "
            err_console.print(f"error: {where}{exc.strerror or exc}{' (a write failed)' if full else ''}", markup=False)
            raise typer.Exit(2) from None

    return wrapper


_TORCH_THREADS = {"train_cmd", "quant_finetune_cmd"}  # --threads 0 keeps torch's default there


def _check_threads(command: str, threads) -> None:
    """Refuse --threads below 1 (below 0 for torch's thread count) in one line: the runtimes otherwise fail deep
    inside with their own messages, or silently run with their default."""
    least = 0 if command in _TORCH_THREADS else 1
    if isinstance(threads, int) and threads < least:
        raise MobileReIDError(f"--threads {threads}: must be >= {least}{' (0 = torch default)' if least == 0 else ''}")


def _version(value: bool):
    if value:
        console.print(f"mobilereid {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool | None = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show the libraries' own log lines (TensorFlow, ExecuTorch, torch warnings)."
    ),
):
    """mobilereid: train, compress, quantize, export and evaluate person ReID models for edge devices."""
    import os

    from .chatter import ENV, silence_libraries
    from .interrupts import exit_cleanly_on_sigterm

    if verbose:
        os.environ[ENV] = "1"
    silence_libraries()
    exit_cleanly_on_sigterm()
    if int(os.environ.get("RANK", 0) or 0) > 0:  # under torchrun only rank 0 talks; every rank's errors still show
        console.quiet = True


@data_app.command("synth")
@user_errors
@cli_options(SynthOptions)
def data_synth(
    out: Path = typer.Argument(..., help="Output folder (must not exist or be empty)."),
    *,
    settings: SynthOptions,
):
    """Generate a synthetic ReID dataset in the Market-1501 layout."""
    from dataclasses import asdict

    from .data.synth import SynthConfig, generate, plan

    cfg = SynthConfig(**asdict(settings))
    total = len(plan(cfg))
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
    from .data.check import check_and_print

    check_and_print(root, images, merge_val)


def _parse_options(options: list[str]) -> dict:
    """`--opt keep_ratio=0.7 --opt windows=2` -> {"keep_ratio": 0.7, "windows": 2} (values parsed as JSON when
    possible)."""
    import json

    out = {}
    for item in options:
        if "=" not in item:
            raise MobileReIDError(f"--opt {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@app.command("train")
@user_errors
@cli_options(TrainConfig)
def train_cmd(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder (Market-1501 layout or MSMT17)."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Output folder for checkpoints and the summary."),
    opt: list[str] = typer.Option(
        [],
        "--opt",
        help="Model option NAME=VALUE (e.g. keep_ratio=0.7, windows=2, gelu=tanh, img_size=[128,64]); repeatable.",
    ),
    pretrained: Path | None = typer.Option(None, help="Local timm/DeiT/TransReID state dict to start a ViT from."),
    init: Path | None = typer.Option(None, help="Start from a mobilereid checkpoint (fine-tuning)."),
    resume: bool = typer.Option(False, help="Continue from OUT/last.pt."),
    *,
    settings: TrainConfig,
):
    """Train a ReID model (PK sampling, label-smoothed CE + batch-hard triplet, warm-up + cosine LR).

    Multi-process data-parallel: `torchrun --nproc_per_node 2 -m mobilereid.cli train ...`.
    """
    from .train import train

    settings.model_options = _parse_options(opt)
    settings.pretrained = str(pretrained) if pretrained else None
    settings.init_checkpoint = str(init) if init else None
    train(settings, data, out, resume=resume)
    console.print(f"checkpoint: {out / 'model.pt'}")


def _parse_size(text: str, flag: str) -> tuple[int, int]:
    """'256x128' -> (256, 128)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise MobileReIDError(f"{flag} {text!r}: expected HEIGHTxWIDTH, e.g. 256x128")
    return int(parts[0]), int(parts[1])


def _parse_triple(text: str | None, flag: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise MobileReIDError(f"{flag} {text!r}: expected three comma-separated numbers (R,G,B), e.g. 0.5,0.5,0.5")
    return vals


@app.command("import")
@user_errors
def import_cmd(
    weights: Path = typer.Argument(
        ...,
        help="A trained foreign state dict (.pth/.pt): TransReID, timm, DeiT, torchreid (OSNet) "
        "or fast-reid (BoT/SBS).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The mobilereid checkpoint to write (refused if it exists, unless --force)."
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="transreid, timm, deit, torchreid or fastreid (default: detected from the keys)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Architecture: vit_base, vit_small (timm ViT-S), vit_small_transreid, deit_small, deit_tiny, ... "
        "(default: from the width).",
    ),
    heads: int | None = typer.Option(None, "--heads", help="Attention heads, for a width no --model name covers."),
    stride: int | None = typer.Option(
        None, "--stride", help="Patch stride (default: from the position embedding, else the patch size)."
    ),
    cameras: int | None = typer.Option(None, "--cameras", help="SIE cameras expected in the weights (checked)."),
    jpm: bool | None = typer.Option(
        None, "--jpm/--no-jpm", help="Use TransReID's JPM local branch (default: when the weights have it)."
    ),
    neck_feat: str = typer.Option(
        "before", "--neck-feat", help="Test feature before or after the BNNeck (TransReID tests with 'before')."
    ),
    img_size: str = typer.Option("256x128", "--img-size", help="Input HEIGHTxWIDTH the model was trained at."),
    sie_coefficient: float = typer.Option(
        3.0, "--sie-coefficient", help="TransReID SIE_COE (camera embedding weight)."
    ),
    pixel_mean: str | None = typer.Option(
        None, "--pixel-mean", help="R,G,B mean (default: TransReID/timm 0.5, DeiT ImageNet)."
    ),
    pixel_std: str | None = typer.Option(
        None, "--pixel-std", help="R,G,B std (default: TransReID/timm 0.5, DeiT ImageNet)."
    ),
    maxpool: str = typer.Option(
        "auto",
        "--maxpool",
        help="fast-reid stem max pool: ceil (since Nov 2020), legacy (padding 1), "
        "auto (from the key names, else ceil).",
    ),
    last_stride: int = typer.Option(
        1, "--last-stride", help="fast-reid layer4 stride (1 in BoT and SBS; not in the weights)."
    ),
    pooling: str | None = typer.Option(
        None, "--pooling", help="fast-reid pooling: avg or gem (default: gem when the weights hold its exponent)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
):
    """Convert a trained TransReID, timm, DeiT, torchreid (OSNet) or fast-reid (BoT/SBS) state dict into a checkpoint.

    No training: the weights are loaded exactly, with their preprocessing and test feature, ready for compress,
    export and evaluate (docs/bring-your-own-model.md)."""
    from .models.importers import ImportOptions, import_weights

    if out.exists() and not force:
        raise MobileReIDError(f"{out}: exists; choose another --out or pass --force")
    if neck_feat not in ("before", "after"):
        raise MobileReIDError(f"--neck-feat {neck_feat!r}: expected before or after")
    if maxpool not in ("auto", "ceil", "legacy"):
        raise MobileReIDError(f"--maxpool {maxpool!r}: expected auto, ceil or legacy")
    if last_stride not in (1, 2):
        raise MobileReIDError(f"--last-stride {last_stride}: expected 1 or 2")
    if pooling not in (None, "avg", "gem"):
        raise MobileReIDError(f"--pooling {pooling!r}: expected avg or gem")
    opts = ImportOptions(
        format=fmt,
        model=model,
        heads=heads,
        img_size=_parse_size(img_size, "--img-size"),
        stride=stride,
        cameras=cameras,
        jpm=jpm,
        neck_feat=neck_feat,
        sie_coefficient=sie_coefficient,
        pixel_mean=_parse_triple(pixel_mean, "--pixel-mean"),
        pixel_std=_parse_triple(pixel_std, "--pixel-std"),
        maxpool=maxpool,
        last_stride=last_stride,
        pooling=pooling,
    )
    res = import_weights(weights, out, opts)
    cfg = res.model.cfg
    if res.format in ("torchreid", "fastreid"):
        console.print(
            f"{weights}: {res.format} {res.model.preset}, {cfg.img_size[0]}x{cfg.img_size[1]}, feature "
            f"{res.model.feature_dim}, mean {list(cfg.pixel_mean)} std {list(cfg.pixel_std)}"
        )
    else:
        console.print(
            f"{weights}: {res.format} {res.model.preset}, {cfg.img_size[0]}x{cfg.img_size[1]} stride {cfg.stride}, "
            f"{cfg.camera_num} SIE cameras, JPM {'on' if cfg.jpm else 'off'}, "
            f"feature {res.model.feature_dim} ({cfg.neck_feat} BNNeck), "
            f"mean {list(cfg.pixel_mean)} std {list(cfg.pixel_std)}"
        )
    for n in res.notes:
        console.print(f"note: {n}")
    if res.unused:
        console.print(
            f"not used by the source's own inference: {len(res.unused)} tensors "
            f"({', '.join(res.unused[:4])}{', ...' if len(res.unused) > 4 else ''})"
        )
    console.print(f"checkpoint: {out}")


@app.command("info")
@user_errors
def info_cmd(
    model: str = typer.Argument(..., help="A preset name or a checkpoint path."),
    opt: list[str] = typer.Option([], "--opt", help="Model option NAME=VALUE for presets; repeatable."),
    depth: int = typer.Option(2, help="Module depth of the per-module table."),
):
    """Parameters and executed GMACs per module (attention matrix products included)."""
    from .flops import count_macs, count_params
    from .models.checkpoint import load_checkpoint
    from .models.registry import PRESETS, build_model

    if model in PRESETS:
        try:
            net = build_model(model, **_parse_options(opt))
        except (ValueError, TypeError) as exc:
            raise MobileReIDError(f"model {model}: {exc}") from None
    else:
        net, _ = load_checkpoint(Path(model))
    total, per = count_macs(net, per_module=True)
    params = dict(net.named_parameters())
    rows = []
    for full, macs in sorted(per.items(), key=lambda kv: [int(t) if t.isdigit() else t for t in kv[0].split(".")]):
        if "." not in full:
            continue  # the root module and the 'Global' total
        name = full.split(".", 1)[1]
        if name.count(".") + 1 > depth:
            continue
        n = sum(p.numel() for k, p in params.items() if k.startswith(name + ".") or k == name)
        rows.append([name, f"{n / 1e6:.3f}", f"{macs / 1e9:.4f}", f"{100 * macs / max(total, 1):.1f}%"])
    console.print(
        table(
            f"{model}: input {net.cfg.img_size[0]}x{net.cfg.img_size[1]}",
            ["module", "params (M)", "GMAC", "share"],
            rows,
        )
    )
    console.print(
        f"total: {count_params(net, exclude_classifier=False) / 1e6:.3f} M parameters "
        f"({count_params(net) / 1e6:.3f} M without the ID classifier), {total / 1e9:.4f} GMAC executed per image"
    )


@app.command("export")
@user_errors
@cli_options(ExportOptions)
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A mobilereid checkpoint (.pt)."),
    target: str = typer.Option(
        "all",
        "--target",
        "-t",
        help=target_help(),
    ),
    calib: Path = typer.Option(
        ...,
        "--calib",
        help="Calibration images: a dataset folder (train images calibrate, query images verify) or any image folder.",
    ),
    out: Path = typer.Option(
        Path("runs/export"), "--out", "-o", help="Output folder for artifacts and their .json sidecars."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Also produce the recipe's quantized variants (INT8, dynamic, int16x8)."
    ),
    recipe: list[Path] | None = typer.Option(
        None,
        help='A quantization recipe TOML, applied to the target it names (target = "..."; a recipe without one '
        "needs a single --target); repeat for several targets. Default: the shipped recipe of each target and "
        "model family (docs/recipes.md).",
    ),
    camera: int | None = typer.Option(
        None,
        "--camera",
        help="Models with an SIE camera embedding (TransReID): the camera whose embedding is baked into the artifacts.",
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        min=1,
        max=2,
        help="2: ExecuTorch and the TFLite family (tflite, edgetpu, tflm) in two processes side by side (needs two "
        "free cores).",
    ),
    *,
    settings: ExportOptions,
):
    """Export, quantize and verify every artifact in its real runtime (exit 1 when one misses its drift budget)."""
    from .export import export_checkpoint
    from .export.tflm.target import tflm_notes

    rows = []

    def show(r):
        v = r["verification"]
        console.print(
            f"{r['target']:<10} {r['precision']:<12} {r['artifact']}  "
            f"cosine mean {v['cosine_mean']:.4f} min {v['cosine_min']:.4f}  "
            f"{'ok' if v['passed'] else 'BELOW ' + str(v['threshold'])}"
        )
        rows.append(r)

    with progress(f"exporting {checkpoint.name} ({target})", None):
        export_checkpoint(
            checkpoint,
            target,
            calib,
            out,
            int8=int8,
            recipe_path=recipe or None,
            threads=settings.threads,
            on_result=show,
            board=settings.board,
            camera=camera,
            core_free=True if processes == 2 else None,
        )
    console.print(
        table(
            "artifacts",
            ["target", "precision", "file", "MB", "cosine mean", "cosine min", "verified"],
            [
                [
                    r["target"],
                    r["precision"],
                    r["artifact"].name,
                    f"{r['artifact'].stat().st_size / 1e6:.2f}",
                    r["verification"]["cosine_mean"],
                    r["verification"]["cosine_min"],
                    "yes" if r["verification"]["passed"] else "NO",
                ]
                for r in rows
            ],
        )
    )
    for r in rows:
        if "edgetpu" in r:
            console.print(f"Edge TPU: {r['edgetpu']['summary']}")
            if not r["compiler"].get("ran"):
                console.print(f"Edge TPU compiler: {r['compiler']['reason']}")
        if "tflm" in r:
            for line in tflm_notes(r["tflm"]):
                console.print(line, markup=False)
        if "delegation" in r:
            nd = r["delegation"]["not_delegated_ops"]
            console.print(
                f"ExecuTorch {r['precision']}: {r['delegation']['delegated_subgraphs']} XNNPACK subgraphs; "
                f"outside XNNPACK: {', '.join(nd) if nd else 'nothing'}"
            )
    failed = [r for r in rows if not r["verification"]["passed"]]
    if failed:
        err_console.print(
            f"error: {len(failed)} artifact(s) missed the recipe's drift budget: "
            + ", ".join(
                f"{r['artifact'].name} "
                f"(cosine {r['verification']['cosine_mean']:.4f} < {r['verification']['threshold']})"
                for r in failed
            ),
            markup=False,
        )
        raise typer.Exit(1)


@app.command("quant-sensitivity")
@user_errors
def quant_sensitivity_cmd(
    checkpoint: Path = typer.Argument(..., help="A mobilereid checkpoint (.pt)."),
    calib: Path = typer.Option(..., "--calib", help="Calibration images (a dataset folder or any image folder)."),
    out: Path = typer.Option(
        Path("runs/sensitivity"),
        "--out",
        "-o",
        help="Folder for sensitivity.{json,md,png} and the chosen recipe_{tflite,tflite_integer,executorch}.toml.",
    ),
    min_cosine: float | None = typer.Option(
        None, help="Drift budget (mean cosine to float); default: the TFLite recipe's."
    ),
    threads: int = typer.Option(2, help="Runtime threads for verification and timing."),
    executorch: bool = typer.Option(True, "--executorch/--no-executorch", help="Also measure ExecuTorch candidates."),
    max_map_drop: float | None = typer.Option(
        None,
        "--max-map-drop",
        min=0,
        help="Choose by retrieval instead: the fastest candidate whose mAP (query/gallery of --calib, even person "
        "ids) is at most this many points below the float model's; checked on the odd ids.",
    ),
):
    """Per-layer INT8 error of the TFLite model, then the fastest measured recipe within the drift budget, per \
runtime."""
    from .export.sensitivity import run_sensitivity

    report = run_sensitivity(
        checkpoint, calib, out, min_cosine=min_cosine, threads=threads, executorch=executorch, max_map_drop=max_map_drop
    )
    if report["layers"]:  # the per-layer ranking exists on the onnx2tf route only
        worst = report["layers"][0]
        console.print(f"worst layer: {worst['op']} {worst['tensor']} (RMSE/scale {worst['rmse_over_scale']:.2f})")
    console.print(f"float model under one grey level of input noise: cosine {report['noise_cosine_1_grey_level']:.4f}")
    choices = [("tflite", report["chosen"])] + (
        [("executorch", report["executorch"]["chosen"])] if report["executorch"] else []
    )
    for target, chosen in choices:
        if chosen:
            console.print(
                f"{target}: chosen {chosen['name']} -> {out / f'recipe_{target}.toml'} "
                f"(use: mobilereid export CKPT --target {target} --int8 --recipe {out / f'recipe_{target}.toml'} ...)"
            )
        else:
            rule = (
                f"mAP within {max_map_drop} points"
                if max_map_drop is not None
                else f"mean cosine >= {report['drift_budget']}"
            )
            err_console.print(f"error: no {target} candidate meets {rule} (see {out / 'sensitivity.md'})", markup=False)
    integer = report.get("chosen_full_integer")
    console.print(
        f"tflite full integer: chosen {integer['name']} -> {out / 'recipe_tflite_integer.toml'}"
        if integer
        else "tflite full integer: no candidate without float ops meets the budget"
    )
    if any(chosen is None for _, chosen in choices):
        raise typer.Exit(1)


@app.command("evaluate")
@user_errors
@cli_options(EvaluateOptions)
def evaluate_cmd(
    artifacts: list[Path] = typer.Argument(..., help="Exported artifacts (each with its .json sidecar)."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder with query/ and bounding_box_test/."),
    reference: Path | None = typer.Option(
        None, help="Float checkpoint: reference metrics, per-image cosine, top-1 agreement."
    ),
    out: Path = typer.Option(
        Path("runs/evaluate"), "--out", "-o", help="Report folder (report.html, report.md, report.json, PNG plots)."
    ),
    remote_python: str = typer.Option(
        "python3", help="Python on the ssh device (needs numpy, Pillow and the artifact's runtime)."
    ),
    flip: bool = typer.Option(
        False, "--flip", help="Test-time flip averaging (image and mirror), for the reference and the artifacts alike."
    ),
    allow_mismatch: bool = typer.Option(
        False,
        "--allow-mismatch",
        help="Evaluate artifacts whose sha256 or source checkpoint does not match (with a warning).",
    ),
    baseline: Path | None = typer.Option(
        None,
        "--baseline",
        help="Your own float model, when compress or quant-finetune changed it before export: "
        "drift against it is the headline.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Overwrite files in --out that mobilereid did not write (report.md, report.json, plots)."
    ),
    write_threshold: bool = typer.Option(
        False,
        "--write-threshold",
        help="Write each artifact's calibrated same-person threshold (at --far) into its sidecar (`match`), where the "
        "Android demo's matcher reads it.",
    ),
    app_gallery: str = typer.Option(
        "auto",
        "--app-gallery",
        help="With --write-threshold: how the Android app stores templates, written into the sidecar "
        "(`match.gallery`): float32, float16, int8, binary or pcaK, measured with --gallery-formats (binary and pcaK "
        "get thresholds of their own, pcaK its projection); auto = int8 when measured, else float32.",
    ),
    torch_device: str = typer.Option(
        "auto",
        "--torch-device",
        help="Where the torch --reference/--baseline embed: auto, cpu, cuda, cuda:N "
        "(--device is the artifacts' machine).",
    ),
    inspect: bool = typer.Option(
        False,
        "--inspect",
        help="Add per-op sections (time by op type, ops outside XNNPACK, lowest-SQNR ops) for .pte/.tflite "
        "artifacts, measured on this host (needs --reference; `mobilereid inspect` has the full tables).",
    ),
    *,
    settings: EvaluateOptions,
):
    """Accuracy drift, latency and size of artifacts, measured by the on-device evaluator.

    --reference takes a mobilereid checkpoint or a torch.export program (.pt2)."""
    from .evaluate import check_app_gallery, evaluate_artifacts
    from .gallery import parse_formats
    from .report import eval_markdown

    check_app_gallery(app_gallery, parse_formats(settings.gallery_formats))
    report = evaluate_artifacts(
        artifacts,
        data,
        out,
        reference=reference,
        device=settings.device,
        threads=settings.threads,
        remote_python=remote_python,
        flip=flip,
        allow_mismatch=allow_mismatch,
        baseline=baseline,
        limit=settings.limit or None,
        far=settings.far,
        gallery_formats=settings.gallery_formats,
        force=force,
        torch_device=torch_device,
        inspect=inspect,
    )
    console.print(eval_markdown(report), markup=False, soft_wrap=True)
    if write_threshold:
        from .evaluate import write_thresholds

        for side in write_thresholds(report, data, out, app_gallery):
            console.print(f"threshold written: {side}", markup=False)
    console.print(
        f"report: {out / 'report.html'} (also report.md, report.json; plots: "
        f"{', '.join(str(out / p) for p in report['plots'])})"
    )


@app.command("inspect")
@user_errors
def inspect_cmd(
    artifact: Path = typer.Argument(..., help="An exported .pte or .tflite (with its .json sidecar)."),
    reference: Path = typer.Option(..., "--reference", help="The float checkpoint the artifact was exported from."),
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder: query/gallery images run through the model."),
    out: Path = typer.Option(Path("runs/inspect"), "--out", "-o", help="Report folder."),
    images: int = typer.Option(4, "--images", min=1, help="Images for the numerics (time uses the first)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Runtime threads."),
    runs: int = typer.Option(50, "--runs", min=5, help="Timed runs per measurement (median)."),
    device: str = typer.Option(
        "local",
        "--device",
        help="local, or qemu-arm64[:CPU]: op outputs from the emulated arm64 board's LiteRT (time stays this host's).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite files in --out that mobilereid did not write."),
):
    """Where an artifact spends its time and loses accuracy, op by op: per-op time (ExecuTorch: ETDump; LiteRT:
    one-op models), what runs outside XNNPACK, and each op output against the float model (ExecuTorch: through a
    rebuild one op per XNNPACK partition)."""
    from .filesafety import refuse_foreign_files
    from .inspection.report import FILES, markdown, write
    from .inspection.run import inspect_artifact

    refuse_foreign_files(out, FILES, force)
    report = inspect_artifact(artifact, reference, data, images=images, threads=threads, runs=runs, device=device)
    write(report, out, force)
    console.print(markdown(report), markup=False, soft_wrap=True)
    console.print(f"report: {out / 'report.html'} (also report.md, report.json, ops.png)", markup=False)


@board_app.command("setup")
@user_errors
def board_setup(
    kind: str = typer.Argument(
        ..., help="arm64: a Debian arm64 root with the aarch64 LiteRT wheel, run under qemu-user 10."
    ),
    cpu: str = typer.Option(
        "cortex-a76", "--cpu", help="CPU model for the smoke test (evaluate picks its own: --device qemu-arm64:CPU)."
    ),
):
    """Build (once; later runs reuse it) the emulated board in the user's cache folder. Needs root and Debian's apt."""
    from .arm64 import Arm64Board, cache_dir

    if kind != "arm64":
        raise MobileReIDError(f"unknown board kind {kind!r}; available: arm64")
    board = Arm64Board()
    if board.ready():
        info = board.info()
        console.print(
            f"arm64 board already set up in {cache_dir()} ({info.get('qemu')}, {info.get('disk_mb')} MB); "
            "delete that folder to rebuild it",
            markup=False,
        )
        return
    info = board.setup(cpu, log=lambda line: console.print(line, markup=False))
    console.print(
        f"arm64 board ready in {cache_dir()}: {info['qemu']}, {info['disk_mb']} MB, {info['seconds'] / 60:.1f} min; "
        "evaluate with --device qemu-arm64[:CPU]",
        markup=False,
    )


@app.command("quant-finetune")
@user_errors
@cli_options(QuantFinetuneConfig)
def quant_finetune_cmd(
    checkpoint: Path = typer.Argument(..., help="A trained SCL-net or ViT checkpoint (.pt)."),
    data: Path = typer.Option(..., "--data", "-d", help="The dataset it was trained on (Market-1501 layout)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output checkpoint (.pt), a float model that quantizes with less drift."
    ),
    *,
    settings: QuantFinetuneConfig,
):
    """Quantization-consistency fine-tuning (PT2E QAT): the INT8 model then agrees with its float model."""
    from .quant_finetune import quant_finetune

    result = quant_finetune(checkpoint, data, out, settings)
    last, before, after = result["history"][-1], result["metrics_before"], result["metrics_after"]
    if before and after:
        console.print(
            f"float model: Rank-1 {before['rank1']:.2%} -> {after['rank1']:.2%}, "
            f"mAP {before['mAP']:.2%} -> {after['mAP']:.2%}"
        )
    console.print(
        f"wrote {result['checkpoint']} (fake-quant vs float embedding cosine {last['embedding_cosine']:.4f}); "
        f"export it as usual: mobilereid export {result['checkpoint']} --target all --int8 --calib {data} -o ..."
    )


@app.command("compress")
@user_errors
@cli_options(CompressConfig)
def compress_cmd(
    checkpoint: Path = typer.Argument(..., help="A ViT checkpoint trained by mobilereid (with its ID classifier)."),
    data: Path = typer.Option(..., "--data", "-d", help="The training dataset (statistics and fine-tuning)."),
    out: Path = typer.Option(
        Path("runs/compress"), "--out", "-o", help="Output folder (compressed.pt, compress_report.json)."
    ),
    *,
    settings: CompressConfig,
):
    """Compress a ViT: patch elimination, windows, AMG head, K/V token and MLP unit pruning (weight surgery).

    Methods, papers and measured results: docs/compression.md."""
    from .compress.pipeline import compress

    result = compress(checkpoint, data, out, settings)
    console.print(f"checkpoint: {result['checkpoint']}")


@app.command("pipeline")
@user_errors
def pipeline(
    config: Path | None = typer.Argument(
        None,
        help="Pipeline config: a TOML file, or the name of a shipped one (mcu, compact); default: the built-in "
        "synthetic run.",
    ),
    workdir: Path = typer.Option(Path("runs/default"), "--workdir", "-w", help="Where every stage writes its outputs."),
):
    """Run the whole job: data, train, compress, export, evaluate, report."""
    from .pipeline import run_pipeline

    shipped = Path(__file__).resolve().parent / "configs" / f"{config}.toml"
    if config is not None and not config.exists() and config.parent == Path(".") and shipped.is_file():
        config = shipped  # a config the package ships, by name
    run_pipeline(config, workdir)


@app.command("benchmark")
@user_errors
def benchmark_cmd(
    checkpoint: Path = typer.Argument(..., help="A mobilereid checkpoint."),
    data: Path = typer.Option(
        ..., "--data", "-d", help="Dataset folder: train images calibrate, query/gallery evaluate."
    ),
    out: Path = typer.Option(Path("runs/benchmark"), "--out", "-o", help="Output folder (artifacts and report)."),
    target: str = typer.Option("all", "--target", "-t", help="Targets to export (default: all)."),
    threads: int = typer.Option(2, help="Runtime threads."),
):
    """Export every target (INT8 included) and evaluate every artifact into one table."""
    from .evaluate import evaluate_artifacts
    from .export import export_checkpoint

    results = export_checkpoint(checkpoint, target, data, out / "artifacts", int8=True, threads=threads)
    report = evaluate_artifacts(
        [r["artifact"] for r in results], data, out / "report", reference=checkpoint, threads=threads
    )
    verified = {r["artifact"].name: r["verification"]["passed"] for r in results}
    rows = [
        [
            r["name"],
            r["runtime"],
            r["precision"],
            f"{r['size_mb']:.2f}",
            f"{100 * r['metrics']['rank1']:.2f}",
            f"{100 * r['metrics']['mAP']:.2f}",
            f"{100 * r['delta_mAP']:+.2f}",
            f"{r['latency']['p50_ms']:.2f}",
            "yes" if verified[r["name"]] else "NO",
        ]
        for r in report["artifacts"]
    ]
    console.print(
        table(
            f"benchmark of {checkpoint.name} ({threads} threads, host CPU)",
            ["artifact", "runtime", "precision", "MB", "Rank-1", "mAP", "ΔmAP", "p50 ms", "verified"],
            rows,
        )
    )
    console.print(f"report: {out / 'report' / 'report.html'} (also report.md, report.json)")


if __name__ == "__main__":
    app()
