"""Export a checkpoint to every target: one module per target behind one function signature
``export_<target>(job, recipe) -> list of results`` (declared in targets.py); this module builds the job (images,
float references) and dispatches."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

from ..console import err_console
from ..embeddings import preprocess_spec_for
from ..errors import ExportError
from ..filesafety import Workdir, stale_scratch_folders
from ..models.checkpoint import file_sha256, load_model
from ..models.registry import model_family
from .calibration import calibration_files, load_batch
from .common import ExportJob
from .recipes import load_recipe, recipe_paths_by_target
from .targets import TARGETS, export_function, resolve_targets


def bake_camera(model, checkpoint: Path, camera: int | None) -> None:
    """Artifacts have one image input and no camera input: a model with an SIE camera embedding gets one camera's
    embedding baked in as a constant (recorded in the config, hence in every sidecar)."""
    sie = getattr(model, "sie_embed", None)
    if sie is None:
        if camera is not None:
            raise ExportError(f"{checkpoint}: --camera {camera}: the model has no camera embedding (SIE)")
        return
    n = int(sie.shape[0])
    if camera is None:
        if model.cfg.sie_camera is None:
            raise ExportError(
                f"{checkpoint}: the model has an SIE camera embedding ({n} cameras) and artifacts have no "
                f"camera input: choose the camera to bake in with --camera K (0..{n - 1})"
            )
        return
    if not 0 <= camera < n:
        raise ExportError(f"--camera {camera}: the model knows cameras 0..{n - 1}")
    model.cfg.sie_camera = camera


def make_job(
    checkpoint: Path,
    model,
    state: dict,
    calib: str | Path,
    out_dir: str | Path,
    n_calib: int,
    n_verify: int,
    threads: int,
) -> ExportJob:
    """Calibration and held-out verification images through the project's preprocessing, plus float references."""
    spec = preprocess_spec_for(model)
    calib_files, verify_files = calibration_files(calib, n_calib, n_verify)
    calib_batch, verify_batch = load_batch(calib_files, spec), load_batch(verify_files, spec)  # unreadable images first
    if len(verify_files) < 2:
        raise ExportError(
            f"{calib}: {len(verify_files)} held-out image(s) for verification; at least 2 are needed "
            f"(the recipe asks for {n_verify})"
        )
    notes = []
    if len(verify_files) < n_verify:
        notes.append(f"verified on {len(verify_files)} held-out images, the recipe asks for {n_verify}")
    if set(verify_files) <= set(calib_files):
        notes.append("the folder is too small to hold images out: verification images are calibration images")
    for n in notes:
        err_console.print(f"warning: {calib}: {n}", markup=False)
    return ExportJob(
        verify_notes=notes,
        model=model,
        family=model_family(model),
        preset=state.get("preset"),
        checkpoint=checkpoint,
        checkpoint_sha256=file_sha256(checkpoint),
        spec=spec,
        calib=calib_batch,
        verify=verify_batch,
        out_dir=Path(out_dir),
        threads=threads,
    )


def export_checkpoint(
    checkpoint: str | Path,
    target: str,
    calib: str | Path,
    out_dir: str | Path,
    int8: bool = False,
    recipe_path: str | Path | None = None,
    threads: int = 2,
    on_result=None,
    board: str | None = None,
    camera: int | None = None,
    core_free=None,
    image_counts: tuple[int, int] | None = None,
    lock_folder: bool = True,
) -> list[dict]:
    """Export ``checkpoint`` to each target of ``target``, verifying every artifact in its runtime. ``core_free``: a
    callable saying whether a second core is free now (or True); then the longest targets run in two processes side
    by side (second_process.py). ``image_counts``: (calibration, verification) images, by default the most any
    target's recipe asks for (the second process gets the first process's counts, so both use the same images).
    ``recipe_path``: one user recipe or a list, each applied to the target it names (recipes.recipe_paths_by_target).
    ``lock_folder``: hold ``out_dir``'s lock (worklock.py) while writing, so that a second export into it stops at
    once; False in the second process, whose parent holds it."""
    targets = resolve_targets(target, int8)
    checkpoint = Path(checkpoint)
    model, state = load_model(checkpoint)
    bake_camera(model, checkpoint, camera)
    family = model_family(model)
    recipes, user_recipes = {}, recipe_paths_by_target(targets, recipe_path)
    for t in targets:
        r = load_recipe(t, family, user_recipes.get(t))
        if not int8:
            r["variants"] = [v for v in r["variants"] if v == "fp32"]
        recipes[t] = r
    n_calib, n_verify = image_counts or (
        max(int(r.get("int8", {}).get("calibration_images", 64)) for r in recipes.values()),
        max(int(r["verify"]["images"]) for r in recipes.values()),
    )
    job = make_job(checkpoint, model, state, calib, out_dir, n_calib, n_verify, threads)
    with _output_lock(Path(out_dir), lock_folder), Workdir(Path(out_dir), "export") as scratch:
        job.scratch = scratch

        def run_here(unit: list[str]) -> list[dict]:
            return [r for t in unit for r in _run_target(job, t, recipes[t], int8, board, on_result)]

        if core_free is None or len(targets) < 2:
            return run_here(targets)
        from .second_process import run_units, work_units

        kwargs = dict(
            checkpoint=checkpoint,
            calib=calib,
            out_dir=out_dir,
            int8=int8,
            threads=threads,
            board=board,
            camera=camera,
            image_counts=(n_calib, n_verify),
            recipe_path={t: str(p) for t, p in user_recipes.items()},
            lock_folder=False,
        )
        results = run_units(
            work_units(targets), run_here, kwargs, core_free if callable(core_free) else lambda: True, on_result
        )
    order = {t: i for i, t in enumerate(targets)}
    return sorted(results, key=lambda r: order[r["target"]])  # sort is stable: a target's variants keep their order


@contextmanager
def _output_lock(out_dir: Path, lock: bool):
    """The output folder's lock, and the temporary folders of an export that was killed (SIGKILL: it could not
    remove them) removed: under the lock no other export is using any."""
    if not lock:
        yield
        return
    from ..worklock import folder_lock

    with folder_lock(out_dir, "output folder", in_file=False):  # no file among the artifacts
        for p in stale_scratch_folders(out_dir, "export"):
            shutil.rmtree(p, ignore_errors=True)
        yield


def _run_target(job: ExportJob, t: str, recipe: dict, int8: bool, board: str | None, on_result) -> list[dict]:
    if not recipe["variants"]:
        return []
    fn = export_function(t)
    quantized = [v for v in recipe["variants"] if v != "fp32"]
    calibrating = f", calibrating on {len(job.calib)} images" if quantized and t != "onnx" else ""
    err_console.print(f"{t}: converting {', '.join(recipe['variants'])}{calibrating}", markup=False)  # progress
    results = fn(job, recipe, board) if TARGETS[t].takes_board else fn(job, recipe)
    for r in results:
        r["target"] = t
        if on_result:
            on_result(r)
    return results
