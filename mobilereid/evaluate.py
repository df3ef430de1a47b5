"""`mobilereid evaluate`: run artifacts through the on-device evaluator (mobilereid/device/evaluator.py) locally,
over ssh or through adb, compare with the float reference, and write one report (JSON, Markdown, CMC and
accuracy-vs-latency plots).

The device side is always the same plain script with the same numpy modules the host uses, started as a separate
process (locally too), so what is measured is what a board runs. Reference embeddings come from the float
checkpoint in torch on the same images; per-image cosine and top-1 agreement say how far each artifact drifted.

Devices:
* ``local``: a subprocess on this machine.
* ``ssh://user@host[:port]``: copies the evaluator and the numpy modules, the artifacts and the query/gallery images
  to a temporary folder on the host (scp), runs the script there with ``--remote-python``, pulls the results back and
  removes the folder. Uses the user's ssh configuration and keys (BatchMode, so it never prompts).
* ``adb[:serial]``: pushes artifacts and images to the phone and starts the Android demo's evaluation mode with
  ``am start`` extras, then pulls its embeddings/timings. Implemented against the demo's documented contract but
  **not verified here** (no phone or Android SDK on the build machines).
* ``qemu-arm64[:CPU]``: the emulated arm64 board (`mobilereid.arm64`, set up once by ``mobilereid board setup arm64``):
  the same script with the real aarch64 LiteRT wheel on an emulated CPU model (e.g. cortex-a55, neoverse-n1). The
  same artifacts also run on this host, and each report row gets the ARM-vs-host agreement (max |Δ|, cosine,
  identical rows, output LSB). Latency under emulation is not a latency: it is left out of the row.

Results (``raw/<key>.npz``, ``raw/<key>.summary.json``) are keyed per artifact, ``0-model.onnx``, ``1-model.onnx``:
two artifacts from two folders may share a file name. A device's errors name the user's artifact paths, and an
evaluator killed by a signal (a runtime's abort or segfault) is reported as a crash on the artifact it was running.

``limit``: a deterministic subset (the queries of evenly spaced identities, their gallery images and as many other
gallery images, evenly spaced), written as a Market-1501 folder and used for every model of the run alike.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .console import err_console, progress
from .data.datasets import load_dataset
from .errors import MobileReIDError
from .programs import run_program
from .runtimes import read_sidecar, sidecar_path

REPO = Path(__file__).resolve().parents[1]
EVAL_SCRIPT = REPO / "mobilereid" / "device" / "evaluator.py"  # package data: a wheel ships it
DEVICE_MODULES = [
    "mobilereid/__init__.py",
    "mobilereid/device/__init__.py",
    "mobilereid/device/evaluator.py",
    "mobilereid/errors.py",
    "mobilereid/gallery.py",
    "mobilereid/host.py",
    "mobilereid/metrics.py",
    "mobilereid/runtimes.py",
    "mobilereid/data/__init__.py",
    "mobilereid/data/preprocess.py",
    "mobilereid/data/datasets.py",
]


class DeviceError(MobileReIDError):
    """The device could not be reached or the evaluator failed there."""


def make_bundle(dest: Path) -> Path:
    """The evaluator and the numpy-only modules it imports, laid out as in the package."""
    for rel in DEVICE_MODULES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, dest / rel)
    return dest


def result_keys(artifacts: list[Path]) -> list[str]:
    """The name of each artifact's result files (``0-model.onnx.npz``), unique in the run: artifacts from two folders
    may share a file name (a/model.onnx, b/model.onnx), and results named by it would overwrite each other."""
    return [f"{i}-{a.name}" for i, a in enumerate(artifacts)]


def staged_model(where: str, i: int, artifact: Path) -> str:
    """Where `stage_device_files` puts the i-th artifact: a folder of its own, so names never collide and the
    device sees the artifact's own file name."""
    return f"{where}/models/{i}/{artifact.name}"


def stage_device_files(stage: Path, artifacts: list[Path], data: Path) -> Path:
    """What a device needs, in one folder: the evaluator bundle, ``models/`` (artifacts and sidecars), ``data/``."""
    make_bundle(stage)
    for i, a in enumerate(artifacts):
        dest = Path(staged_model(str(stage), i, a))
        dest.parent.mkdir(parents=True)
        shutil.copy(a, dest)
        shutil.copy(sidecar_path(a), sidecar_path(dest))
    copy_eval_split(data, stage / "data")
    return stage


def evaluator_args(
    where: str, artifacts: list[Path], threads: int, flip: bool, gallery: tuple[list, tuple] = ([], ())
) -> list[str]:
    """The evaluator's command line (after the Python), for files staged by `stage_device_files` at ``where``.
    ``gallery``: (formats, sizes) of the gallery search the device runs too (pcaK formats stay on the host)."""
    args = [
        f"{where}/mobilereid/device/evaluator.py",
        "--data",
        f"{where}/data",
        "--out",
        f"{where}/results",
        "--threads",
        str(threads),
    ]
    args += ["--flip"] if flip else []
    formats, sizes = gallery
    if formats:
        args += ["--gallery-formats", ",".join(formats), "--gallery-sizes", ",".join(str(n) for n in sizes)]
    for i, (a, key) in enumerate(zip(artifacts, result_keys(artifacts))):
        args += ["--model", staged_model(where, i, a), "--key", key]
    return args


REPORT_FILES = [
    "raw",
    "report.md",
    "report.json",
    "report.html",
    "cmc.png",
    "accuracy_latency.png",
    "roc.png",
]  # what it writes
MARKER = "evaluating "  # the evaluator's line on stderr before each model


@contextlib.contextmanager
def host_paths(where: str, artifacts: list[Path]):
    """A device's error names the staged copies (WHERE/models/I/NAME); the user knows the artifacts by their paths."""
    try:
        yield
    except MobileReIDError as exc:
        msg = str(exc)
        for i, a in enumerate(artifacts):
            msg = msg.replace(staged_model(where, i, a), str(a))
        raise type(exc)(msg) from None


MANIFEST_FORMAT = "mobilereid-eval-manifest"


def copy_eval_split(data: Path, dest: Path, lossless: bool = False) -> Path:
    """Only query and gallery travel to a device, with ``manifest.json``: every image's relative path, person id
    and 0-based camera id as the host's reader labels them (the Android app reads this instead of parsing names).

    ``lossless``: images are decoded here (PIL, as the host evaluator decodes them) and stored as PNG, so a phone
    whose JPEG decoder rounds differently (libjpeg-turbo builds differ in IDCT and chroma upsampling) still sees
    the very pixels the host preprocesses; used for adb, where the app decodes with Android's BitmapFactory."""
    from PIL import Image

    from .data.preprocess import load_rgb

    ds = load_dataset(data, need_train=False)

    def entries(samples) -> list[dict]:
        out = []
        for s in samples:
            # as listed under the root, not resolved: query/ or the images may be links to elsewhere (a shared
            # Market-1501); copyfile follows them, so the device gets the content
            rel = s.path.relative_to(data)
            if ".." in rel.parts:
                raise MobileReIDError(f"{s.path}: outside the dataset folder {data}")
            if lossless:
                rel = rel.with_suffix(".png")
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(load_rgb(s.path)).save(dest / rel)
            else:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(s.path, dest / rel)
            out.append({"file": rel.as_posix(), "pid": int(s.pid), "camid": int(s.camid)})
        return out

    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "query": entries(ds.query),
        "gallery": entries(ds.gallery),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dest


def completed_summary(raw: Path, name: str) -> dict:
    """A device's summary; the Android app leaves Rank-k/mAP to the host, which scores its embeddings here."""
    summary = json.loads((raw / f"{name}.summary.json").read_text())
    if "metrics" not in summary:
        from .metrics import rank_summary

        npz = np.load(raw / f"{name}.npz")
        summary["metrics"] = rank_summary(
            npz["query"], npz["gallery"], npz["q_pids"], npz["g_pids"], npz["q_camids"], npz["g_camids"]
        )
    return summary


def _run(cmd: list[str], what: str, timeout: int = 3600, marker: str | None = None) -> str:
    """Run a device program; its ``marker`` lines (``evaluating PATH``) are shown as they come: the progress of a
    long evaluation, and the pipeline's status line."""
    say = (lambda line: err_console.print(line, markup=False)) if marker else None
    return run_program(cmd, what, DeviceError, timeout, marker=marker, on_step=say)


def run_local(
    artifacts: list[Path], data: Path, out: Path, threads: int, python: str | None = None, flip: bool = False
) -> None:
    cmd = [
        python or sys.executable,
        str(EVAL_SCRIPT),
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    cmd += ["--flip"] if flip else []
    for a, key in zip(artifacts, result_keys(artifacts)):
        cmd += ["--model", str(a), "--key", key]
    _run(cmd, "local evaluator", marker=MARKER)


def parse_ssh(device: str) -> tuple[str, int]:
    m = re.fullmatch(r"ssh://([^@/:\s]+@)?([^@/:\s]+)(?::(\d+))?/?", device)
    if not m:
        raise MobileReIDError(f"--device {device!r}: expected ssh://user@host[:port]")
    if (m.group(1) or "").startswith("-") or m.group(2).startswith("-"):
        raise MobileReIDError(
            f"--device {device!r}: a user or host name cannot start with '-' (it would reach ssh as an option)"
        )
    return f"{m.group(1) or ''}{m.group(2)}", int(m.group(3) or 22)


def run_ssh(
    device: str,
    artifacts: list[Path],
    data: Path,
    out: Path,
    threads: int,
    python: str,
    ssh_options: list[str],
    flip: bool = False,
    gallery: tuple[list, tuple] = ([], ()),
) -> None:
    target, port = parse_ssh(device)
    base = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"] + ssh_options
    ssh = ["ssh", "-p", str(port)] + base + ["--", target]  # '--': the destination is never read as an option
    scp = ["scp", "-q", "-r", "-P", str(port)] + base
    remote = _run(ssh + ["mktemp -d /tmp/mobilereid-eval.XXXXXX"], f"ssh {target}:{port}").strip()
    if not remote.startswith("/tmp/mobilereid-eval."):
        raise DeviceError(f"ssh {target}:{port}: unexpected answer to mktemp: {remote!r}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stage = stage_device_files(Path(tmp) / "bundle", artifacts, data)
            _run(scp + ["--"] + [str(p) for p in stage.iterdir()] + [f"{target}:{remote}/"], f"scp to {target}")
        args = [python] + evaluator_args(remote, artifacts, threads, flip, gallery)
        with host_paths(remote, artifacts):
            _run(ssh + [" ".join(shlex.quote(x) for x in args)], f"evaluator on {target}", marker=MARKER)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _run(scp + ["--", f"{target}:{remote}/results", tmp], f"scp from {target}")
            for f in (Path(tmp) / "results").iterdir():
                shutil.copy(f, out / f.name)
    finally:
        subprocess.run(ssh + [f"rm -rf {shlex.quote(remote)}"], capture_output=True, timeout=60)


ANDROID_PACKAGE = "org.mobilereid.demo"
ANDROID_DIR = "/sdcard/Android/data/org.mobilereid.demo/files/eval"


def run_adb(device: str, artifacts: list[Path], data: Path, out: Path, threads: int) -> None:
    """NOT VERIFIED without a phone: pushes to the demo app's files folder and starts its evaluation mode."""
    serial = device.split(":", 1)[1] if ":" in device else None
    adb = ["adb"] + (["-s", serial] if serial else [])
    _run(adb + ["get-state"], "adb device")
    _run(adb + ["shell", "rm", "-rf", ANDROID_DIR], "adb")
    _run(adb + ["shell", "mkdir", "-p", ANDROID_DIR], "adb")
    with tempfile.TemporaryDirectory() as tmp:
        copy_eval_split(data, Path(tmp) / "data", lossless=True)
        _run(adb + ["push", str(Path(tmp) / "data"), f"{ANDROID_DIR}/data"], "adb push data")
    for a, key in zip(artifacts, result_keys(artifacts)):
        # pushed as KEY (the app takes plain names, and names its results after the model): names never collide
        _run(adb + ["push", str(a), f"{ANDROID_DIR}/{key}"], "adb push model")
        _run(adb + ["push", str(sidecar_path(a)), f"{ANDROID_DIR}/{sidecar_path(key).name}"], "adb push sidecar")
        _run(
            adb
            + [
                "shell",
                "am",
                "start",
                "-W",
                "-n",
                f"{ANDROID_PACKAGE}/.EvaluationActivity",
                "--es",
                "model",
                key,
                "--es",
                "data",
                "data",
                "--ei",
                "threads",
                str(threads),
            ],
            "adb am start",
        )
        done = f"{ANDROID_DIR}/results/{key}.summary.json"
        failed = f"{ANDROID_DIR}/results/{key}.error.txt"  # the app's one-line reason when it cannot evaluate
        for _ in range(3600):
            if subprocess.run(adb + ["shell", "test", "-f", done], capture_output=True).returncode == 0:
                break
            if subprocess.run(adb + ["shell", "test", "-f", failed], capture_output=True).returncode == 0:
                reason = _run(adb + ["shell", "cat", failed], "adb").strip()
                raise DeviceError(f"adb: the demo app could not evaluate {a}: {reason}")
            time.sleep(1)
        else:
            raise DeviceError(f"adb: the demo app wrote no {done} within an hour")
    with tempfile.TemporaryDirectory() as tmp:
        _run(adb + ["pull", f"{ANDROID_DIR}/results", tmp], "adb pull")
        pulled = Path(tmp) / "results"  # adb pull DIR into an existing folder creates DIR inside it
        out.mkdir(parents=True, exist_ok=True)
        for f in (pulled if pulled.is_dir() else Path(tmp)).iterdir():
            shutil.move(str(f), out / f.name)


def limited_split(data: Path, dest: Path, limit: int) -> Path:
    """A smaller evaluation set drawn deterministically from ``data`` (any layout), written in Market-1501 layout:
    evenly spaced identities, enough for ``limit`` queries (all their queries, cut at ``limit``), all their gallery
    images, and as many other gallery images as there are queries, evenly spaced (distractors)."""
    if limit < 1:
        raise MobileReIDError(f"--limit {limit}: expected a number of query images >= 1")
    ds = load_dataset(data, need_train=False)
    spaced = lambda items, n: (
        [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round())] if items else []
    )  # noqa: E731
    pids = sorted({s.pid for s in ds.query})
    per_identity = len(ds.query) / max(len(pids), 1)
    chosen = set(spaced(pids, int(np.ceil(limit / per_identity))))
    query = [s for s in ds.query if s.pid in chosen][:limit]
    chosen = {s.pid for s in query}
    same = [s for s in ds.gallery if s.pid in chosen]
    others = spaced([s for s in ds.gallery if s.pid not in chosen], len(query))
    for folder, samples in (("query", query), ("bounding_box_test", same + others)):
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(samples):
            shutil.copyfile(s.path, dest / folder / f"{s.pid:04d}_c{s.camid + 1}s1_{i:06d}{s.path.suffix.lower()}")
    return dest


def parse_qemu(device: str) -> str:
    from .arm64 import DEFAULT_CPU, check_cpu

    cpu = device.partition(":")[2] or DEFAULT_CPU
    return check_cpu(cpu)


def run_qemu_arm64(
    device: str,
    artifacts: list[Path],
    metas: list[dict],
    data: Path,
    out: Path,
    threads: int,
    flip: bool = False,
    gallery: tuple[list, tuple] = ([], ()),
) -> dict:
    """The evaluator in the emulated arm64 root (files staged in its /tmp, removed afterwards); the board's record."""
    from .arm64 import Arm64Board

    cpu = parse_qemu(device)
    for a, m in zip(artifacts, metas):
        if m["runtime"] != "litert":
            raise MobileReIDError(
                f"{a}: runtime {m['runtime']} is not installed on the emulated arm64 board (LiteRT only; "
                "ExecuTorch on aarch64 needs torch and its 2.7 GB of CUDA wheels)"
            )
    board = Arm64Board()
    board.require_ready()
    stage = board.stage_dir()
    try:
        stage_device_files(stage, artifacts, data)
        t0 = time.perf_counter()
        where = board.guest_path(stage)
        with host_paths(where, artifacts):
            board.run(cpu, evaluator_args(where, artifacts, threads, flip, gallery), marker=MARKER)
        seconds = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        for f in (stage / "results").iterdir():
            shutil.copy(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"cpu": cpu, "qemu": board.info().get("qemu"), "wall_seconds": seconds}


def arm_agreement(arm: np.ndarray, host: np.ndarray, meta: dict) -> dict:
    """ARM embeddings against the host's for the same artifact and images: max |Δ|, cosine, identical rows, and the
    difference in output LSB when the output is integer."""
    from .export.common import cosine_rows

    diff = np.abs(arm.astype(np.float64) - host.astype(np.float64))
    cos = cosine_rows(arm, host)
    out = {
        "images": int(len(arm)),
        "max_abs_diff": float(diff.max()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "identical_fraction": float(np.mean(np.all(arm == host, axis=1))),
    }
    q = (meta.get("output") or {}).get("quantization")
    if q and meta["output"].get("dtype") in ("int8", "uint8") and q.get("scale"):
        out["max_output_lsb"] = int(round(out["max_abs_diff"] / float(q["scale"])))
    return out


def verification_status(meta: dict) -> str:
    """'passed', 'FAILED' (below its recipe's drift budget at export) or 'missing' (never verified)."""
    v = meta.get("verification")
    if not isinstance(v, dict) or "passed" not in v:
        return "missing"
    return "passed" if v["passed"] else "FAILED"


def check_artifacts(artifacts: list[Path], reference: Path | None = None, allow_mismatch: bool = False) -> list[dict]:
    """Each artifact is what its sidecar says: its sha256 matches, and a --reference is its source checkpoint
    (both errors unless ``allow_mismatch``); an artifact whose export verification failed or is missing is
    evaluated with a warning and its status goes into the report."""
    from .models.checkpoint import file_sha256

    metas = []
    ref_sha = file_sha256(reference) if reference is not None and Path(reference).is_file() else None
    for a in artifacts:
        if a.is_dir():
            raise MobileReIDError(f"{a}: is a directory, not an artifact")
        if not a.is_file():
            raise MobileReIDError(f"{a}: artifact not found")
        try:
            meta = read_sidecar(a)
        except FileNotFoundError as exc:
            raise MobileReIDError(str(exc)) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise MobileReIDError(
                f"{sidecar_path(a)}: not a valid JSON sidecar ({' '.join(str(exc).split())[:120]})"
            ) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict) or "runtime" not in meta:
            raise MobileReIDError(f"{sidecar_path(a)}: not a mobilereid sidecar (no model/runtime description)")
        problems = []
        sha_matches = meta.get("sha256") == file_sha256(a)
        if not sha_matches:
            problems.append(f"{a}: sha256 differs from its sidecar's (the file was changed after export)")
        src = meta["model"].get("source_sha256")
        if ref_sha is not None and src is not None and src != ref_sha:
            problems.append(
                f"{a}: was exported from another checkpoint than --reference {reference} (source sha256 differs)"
            )
        for p in problems:
            if not allow_mismatch:
                raise MobileReIDError(p + "; pass --allow-mismatch to evaluate it anyway")
            err_console.print(f"warning: {p}", markup=False)
        meta["integrity"] = {
            "sha256_matches": sha_matches,
            "reference_is_source": None if ref_sha is None or src is None else src == ref_sha,
        }
        status = verification_status(meta)
        if status != "passed":
            err_console.print(f"warning: {a}: export verification {status}", markup=False)
        metas.append(meta)
    return metas


def npz_labels(npz) -> tuple:
    """(query pids, gallery pids, query cameras, gallery cameras) of an evaluator's results file."""
    return npz["q_pids"], npz["g_pids"], npz["q_camids"], npz["g_camids"]


def format_threshold(npz, far: float, pca: dict | None = None) -> dict:
    """The same-person threshold of a gallery format whose score is not the full cosine, calibrated like the
    artifact's own (`matching.held_out_threshold`): pcaK (``pca`` given) on the projected embeddings; binary on the +-1
    sign vectors, whose cosine is (D - 2 x Hamming) / D."""
    from .gallery import project, sign_vectors
    from .matching import held_out_threshold

    def code(x):
        return project(x, pca) if pca is not None else sign_vectors(x)

    t = held_out_threshold(code(npz["query"]), code(npz["gallery"]), *npz_labels(npz), target_far=far)
    return {k: t[k] for k in ("value", "target_far", "held_out_far", "held_out_tar")}


def add_matching(row: dict, npz, summary: dict, far: float, user_embeddings=None) -> None:
    """The deployment numbers of one artifact (matching.py): same-person decision metrics with a threshold calibrated
    on half of the identities and measured on the other (a one-line warning when a few look-alike people set it);
    compatibility with the user's model (``user_embeddings``:
    its query and gallery embeddings), with a one-line warning when a gallery enrolled with that model would not
    work."""
    from .matching import compatibility, compatibility_problem, verification

    labels = npz_labels(npz)
    row["matching"] = verification(npz["query"], npz["gallery"], *labels, target_far=far)
    if row["matching"]["threshold"].get("warning"):
        err_console.print(f"warning: {row['name']}: {row['matching']['threshold']['warning']}", markup=False)
    if user_embeddings is None or user_embeddings[0].shape[1] != npz["query"].shape[1]:
        return
    uq, ug = user_embeddings
    row["compatibility"] = compatibility(npz["query"], ug, uq, npz["gallery"], *labels)
    problem = compatibility_problem(row["compatibility"], summary["metrics"]["mAP"])
    if problem:
        row["compatibility"]["warning"] = problem
        err_console.print(f"warning: {row['name']}: {problem}", markup=False)


# what the Android core stores (android_demo: GalleryFormat)
APP_GALLERIES = ("auto", "float32", "float16", "int8", "binary", "pcaK")


def check_app_gallery(app_gallery: str, measured: list[str]) -> None:
    """``--app-gallery``: a format the app stores, measured by this evaluation (its scale or projection and threshold
    come from the measurement); a one-line error otherwise."""
    from .gallery import pca_dims

    if app_gallery in ("auto", "float32"):
        return
    if app_gallery not in ("float16", "int8", "binary") and not pca_dims(app_gallery):
        raise MobileReIDError(f"--app-gallery {app_gallery}: the app stores {', '.join(APP_GALLERIES)}")
    if app_gallery not in measured:
        raise MobileReIDError(f"--app-gallery {app_gallery}: not measured; add it to --gallery-formats")


def app_gallery_block(row: dict, fmt: str, raw: Path | None) -> dict | None:
    """``match.gallery`` for the format the app stores: float16 (scored as the cosine, the artifact's threshold);
    int8's global scale; binary's threshold on (D - 2 x Hamming) / D; pcaK's projection (mean and components, from
    the evaluation's ``raw/KEY.pcaK.npz``) with its own threshold; None for float32."""
    measured = next((f for f in row.get("gallery_formats") or [] if f["format"] == fmt), None)
    if measured is None:
        return None
    if fmt == "float16":
        return {"format": "float16", "delta_mAP": measured["delta_mAP"]}
    if fmt == "int8":
        return {"format": "int8", "scale": measured["scale"], "delta_mAP": measured["delta_mAP"]}
    block = {
        "format": fmt,
        "threshold": measured["threshold"]["value"],
        "held_out_far": measured["threshold"]["held_out_far"],
        "held_out_tar": measured["threshold"]["held_out_tar"],
        "delta_mAP": measured["delta_mAP"],
    }
    if fmt == "binary":
        return block
    if raw is None:
        raise MobileReIDError(f"--app-gallery {fmt}: the projection is read from the evaluation's raw/ folder")
    with np.load(raw / f"{row['result_key']}.{fmt}.npz") as pca:
        mean, components = pca["mean"].astype(np.float32), pca["components"].astype(np.float32)
    return {**block, "mean": _shortest_floats(mean), "components": [_shortest_floats(row) for row in components]}


def _shortest_floats(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that narrow back to the same float32 (numpy's repr): about half the
    JSON of their float64 expansions, and the same bits in the app (Kotlin's toFloat)."""
    return [float(str(v)) for v in np.asarray(values, np.float32)]


def write_thresholds(report: dict, data: Path, out: Path | None = None, app_gallery: str = "auto") -> list[Path]:
    """Each artifact's calibrated same-person threshold into its sidecar (``match``: threshold, FAR it was set for,
    the held-out FAR and TAR, the data, and the sha256 of the artifact it belongs to): the Android core's matcher
    starts from it. ``match.gallery`` says how the app stores templates (``app_gallery``; ``auto``: int8 when it was
    measured, else float32): float16, int8 with its global scale, binary with its own threshold, or pcaK with its
    projection (read from ``out``/raw) and its own threshold (their scores are not the full cosine). The sidecar is
    rewritten atomically; everything else in it is kept."""
    from .filesafety import atomic_write_text
    from .runtimes import read_sidecar, sidecar_path

    written = []
    for r in report["artifacts"]:
        t = r.get("matching", {}).get("threshold")
        if not t:
            continue
        side, meta = sidecar_path(r["artifact"]), read_sidecar(r["artifact"])
        meta["match"] = {
            "threshold": t["value"],
            "far": t["target_far"],
            "held_out_far": t["held_out_far"],
            "held_out_tar": t["held_out_tar"],
            "fitted_on": t["fitted_on"],
            "tail_identity_pairs": t.get("tail_identity_pairs"),
            "far_spread": t.get("far_spread"),
            "data": str(data),
            "artifact_sha256": meta.get("sha256", ""),
            "written_by": "mobilereid evaluate --write-threshold",
        }
        fmt = "int8" if app_gallery == "auto" else app_gallery
        gallery = app_gallery_block(r, fmt, Path(out) / "raw" if out else None) if fmt != "float32" else None
        if gallery is not None:
            meta["match"]["gallery"] = gallery
        atomic_write_text(side, json.dumps(meta, indent=2))
        written.append(side)
    return written


def reference_embeddings(
    checkpoint: Path, data: Path, cache: Path, flip: bool = False, compute=None
) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """The user's float model on query and gallery (SIE models: with each image's camera, TransReID's protocol),
    on ``compute``'s device in exact fp32 (no TF32, no autocast: a reference, see compute.py)."""
    from .compute import CPU
    from .embeddings import extract_features, preprocess_spec_for, rank_metrics
    from .models.checkpoint import load_model

    compute = compute or CPU
    model, _ = load_model(checkpoint)
    model = model.to(compute.device)
    ds = load_dataset(data, need_train=False)
    spec = preprocess_spec_for(model)
    q = extract_features(model, ds.query, spec, desc="reference: query", flip=flip, compute=compute)
    g = extract_features(model, ds.gallery, spec, desc="reference: gallery", flip=flip, compute=compute)
    return q, g, rank_metrics(q, g, ds), model.feature_dim


def drift(q: np.ndarray, g: np.ndarray, rq: np.ndarray, rg: np.ndarray) -> dict:
    from .export.common import cosine_rows
    from .metrics import cosine_distance

    cos = np.concatenate([cosine_rows(q, rq), cosine_rows(g, rg)])
    top1 = np.argsort(cosine_distance(q, g), axis=1, kind="stable")[:, 0]
    ref_top1 = np.argsort(cosine_distance(rq, rg), axis=1, kind="stable")[:, 0]
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": float((top1 == ref_top1).mean()),
    }


def evaluate_artifacts(
    artifacts: list[Path],
    data: Path,
    out: Path,
    reference: Path | None = None,
    device: str = "local",
    threads: int = 2,
    remote_python: str = "python3",
    ssh_options: list[str] | None = None,
    flip: bool = False,
    allow_mismatch: bool = False,
    baseline: Path | None = None,
    limit: int | None = None,
    force: bool = False,
    torch_device: str = "auto",
    far: float = 1e-3,
    gallery_formats: str = "",
    inspect: bool = False,
) -> dict:
    """Run every artifact through the evaluator on `device` and score it.

    ``reference``: the float model the artifacts were exported from (checked by hash); drift against it is what
    conversion and quantization cost. ``baseline``: the user's own float model when a stage of ours changed it
    before export (compression, quantization fine-tuning); drift against it is the headline, since it is what the
    user gets compared with what they gave us. ``force``: overwrite files in ``out`` that mobilereid did not write.
    ``torch_device``: where the torch reference and baseline embed (``--torch-device``; ``device`` is the runtime's
    machine)."""
    from .filesafety import refuse_foreign_files
    from .report import write_eval_report

    data = Path(data)
    if flip and (device == "adb" or device.startswith("adb:")):
        raise MobileReIDError("--flip: the Android demo app's evaluation mode does not average mirrored images")
    compute = None
    if reference is not None or baseline is not None:
        from .compute import resolve  # torch only when there is a torch model to run

        compute = resolve(torch_device, "fp32", None, device_flag="--torch-device")
    if inspect and reference is None:
        raise MobileReIDError("--inspect compares each op with the float model: pass --reference")
    refuse_foreign_files(Path(out), REPORT_FILES, force)  # before the work, not after it
    from .gallery import compare_formats, device_agreement, parse_formats, pca_dims

    formats = parse_formats(gallery_formats)
    qemu = device == "qemu-arm64" or device.startswith("qemu-arm64:")
    if qemu:
        parse_qemu(device)
    metas = check_artifacts(artifacts, reference, allow_mismatch)
    source = load_dataset(data, need_train=False)  # fail early on a bad dataset
    pca_formats = [f for f in formats if pca_dims(f)]
    searched_on_device = [f for f in formats if f not in pca_formats]  # pcaK: fitted and searched on the host
    if pca_formats and not source.train:
        raise MobileReIDError(
            f"--gallery-formats {pca_formats[0]}: PCA is fitted on the training split, and {data} has none "
            "(bounding_box_train/)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"data": str(data)}
        fit = fit_embeddings(artifacts, source, Path(tmp), threads) if pca_formats else {}
        if limit is not None:
            data = limited_split(data, Path(tmp) / "subset", limit)
            extra["limit"] = {
                "queries": len(list((data / "query").iterdir())),
                "gallery": len(list((data / "bounding_box_test").iterdir())),
                "asked": limit,
            }
        ref = None
        if reference is not None:
            rq, rg, ref_metrics, dim = reference_embeddings(reference, data, out, flip, compute)
            for a, m in zip(artifacts, metas):
                if m["model"]["embedding_dim"] != dim:
                    raise MobileReIDError(
                        f"{a}: embedding size {m['model']['embedding_dim']} "
                        f"does not match the reference {reference} ({dim})"
                    )
            ref = {"checkpoint": str(reference), "metrics": ref_metrics}
        base = None
        if baseline is not None:
            bq, bg, base_metrics, _ = reference_embeddings(baseline, data, out, flip, compute)
            base = {"checkpoint": str(baseline), "metrics": base_metrics}
        raw = Path(tmp) / "raw"
        with progress(f"evaluating {len(artifacts)} artifact(s) on {device}", None):
            if device == "local":
                run_local(artifacts, data, raw, threads, flip=flip)
            elif device.startswith("ssh://"):
                gallery = (searched_on_device, (1_000, 10_000, 100_000))
                run_ssh(device, artifacts, data, raw, threads, remote_python, ssh_options or [], flip, gallery)
            elif device == "adb" or device.startswith("adb:"):
                run_adb(device, artifacts, data, raw, threads)
            elif qemu:
                gallery = (searched_on_device, (1_000,))  # agreement; emulated time is no latency
                arm = run_qemu_arm64(device, artifacts, metas, data, raw, threads, flip, gallery)
                host_raw = Path(tmp) / "host"
                run_local(artifacts, data, host_raw, threads, flip=flip)  # the same artifacts and images on this host
            else:
                raise MobileReIDError(
                    f"--device {device!r}: expected local, ssh://user@host[:port], adb[:serial] or qemu-arm64[:CPU]"
                )
        rows, projections = [], {}
        for a, m, key in zip(artifacts, metas, result_keys(artifacts)):
            summary = completed_summary(raw, key)
            device_formats = summary.pop("gallery_formats", None)  # the device's own search, checked below
            row = {
                "artifact": str(a),
                "name": a.name,
                "target": m["target"],
                "runtime": m["runtime"],
                "precision": m["precision"],
                "size_mb": a.stat().st_size / 1e6,
                "verification": verification_status(m),
                "integrity": m["integrity"],
                **({"baked_camera": m["camera"]["baked_camera"]} if isinstance(m.get("camera"), dict) else {}),
                **summary,
            }
            row["artifact"], row["result_key"] = str(a), key  # the summary's artifact: the name the device saw
            npz = np.load(raw / f"{key}.npz")
            if ref is not None:
                row["drift"] = drift(npz["query"], npz["gallery"], rq, rg)
                row["delta_mAP"] = summary["metrics"]["mAP"] - ref["metrics"]["mAP"]
                row["delta_rank1"] = summary["metrics"]["rank1"] - ref["metrics"]["rank1"]
            if base is not None:
                if npz["query"].shape[1] == bq.shape[1]:
                    row["drift_vs_baseline"] = drift(npz["query"], npz["gallery"], bq, bg)
                row["delta_mAP_vs_baseline"] = summary["metrics"]["mAP"] - base["metrics"]["mAP"]
                row["delta_rank1_vs_baseline"] = summary["metrics"]["rank1"] - base["metrics"]["rank1"]
            if qemu:
                host_npz = np.load(host_raw / f"{key}.npz")
                emb = lambda z: np.concatenate([z["query"], z["gallery"]])  # noqa: E731
                row["arm"] = {
                    **arm,
                    "vs_host": arm_agreement(emb(npz), emb(host_npz), m),
                    "host_metrics": completed_summary(host_raw, key)["metrics"],
                    "emulated_ms_per_image_p50": row["latency"]["p50_ms"],
                }
                row["latency"] = None  # emulation time, not a latency (see the report)
            user = (bq, bg) if base is not None else (rq, rg) if ref is not None else None  # the model the user gave
            add_matching(row, npz, summary, far, user)
            if formats:
                row["gallery_formats"] = compare_formats(
                    npz["query"], npz["gallery"], *npz_labels(npz), formats, fit=fit.get(key)
                )
                if device_formats:
                    row["gallery_formats_device"] = device_agreement(row["gallery_formats"], device_formats, qemu)
                for f in row["gallery_formats"]:
                    f.pop("top1")
                    if "pca" in f or f["format"] == "binary":  # scores of their own: thresholds of their own
                        f["threshold"] = format_threshold(npz, far, f.get("pca"))
                    if "pca" in f:  # the projection travels as a file next to the report, not in the JSON
                        projections[f"{key}.{f['format']}.npz"] = f.pop("pca")
            if inspect and m["runtime"] in ("executorch", "litert"):
                from .inspection.run import inspect_artifact

                with progress(f"inspecting {a.name} op by op", None):
                    row["inspect"] = inspect_artifact(a, reference, data, images=2, threads=threads, runs=20)
            rows.append(row)
        report = {
            **extra,
            "device": device,
            "threads": threads,
            "flip": flip,
            "reference": ref,
            "baseline": base,
            "target_far": far,
            "artifacts": rows,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for name, pca in projections.items():
            np.savez(raw / name, **pca)
            report.setdefault("pca_files", []).append(f"raw/{name}")
        write_eval_report(report, out, raw, force)
    return report


FIT_IMAGES = 500  # training images embedded to fit pcaK gallery formats


def fit_embeddings(artifacts: list[Path], ds, tmp: Path, threads: int) -> dict:
    """Each artifact's embeddings of up to `FIT_IMAGES` evenly spaced training images, on this host in the
    artifact's runtime (a deployment fits a projection offline and ships it): the local evaluator runs on a folder
    whose queries are those images and whose gallery is the same images under another camera id (so that it
    scores; the scores are not used)."""
    picks = np.unique(np.linspace(0, len(ds.train) - 1, min(FIT_IMAGES, len(ds.train))).round().astype(int))
    folder = tmp / "fit"
    for sub, cam in (("query", 1), ("bounding_box_test", 2)):
        (folder / sub).mkdir(parents=True)
        for j, i in enumerate(picks):
            s = ds.train[int(i)]
            shutil.copyfile(s.path, folder / sub / f"{max(s.pid, 1):04d}_c{cam}s1_{j:06d}{s.path.suffix.lower()}")
    run_local(artifacts, folder, tmp / "fit_raw", threads)
    return {key: np.load(tmp / "fit_raw" / f"{key}.npz")["query"] for key in result_keys(artifacts)}
