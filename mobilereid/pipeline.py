"""`mobilereid pipeline [CONFIG.toml]`: the whole job in one command.

Stages: data (synthetic by default, or a real dataset path) -> train SCL-net and a small ViT -> compress the ViT
(patch elimination, AMG heads and K/V tokens) -> export INT8 for every target -> evaluate every artifact against
its float model -> one final report (Markdown + JSON + plots).

Re-runs skip a stage whose inputs have not changed: each stage writes ``<workdir>/<stage>/stamp.json`` holding a
hash of its configuration and of the files it consumed, and the name and size of every file it wrote; a stage re-runs
when that hash differs or one of its files is missing or changed size. One run at a time per work folder (a lock:
worklock.py). The default job is a config file like any user's (configs/default.toml), sized to finish in about 15
minutes on 2 CPU cores; every key and its default: docs/pipeline-config.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from . import cores as core_share
from .console import console
from .errors import MobileReIDError
from .filesafety import STAGE_MARK
from .settings import section_from_table
from .tomlconfig import deep_merge, read_toml
from .worklock import folder_lock

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "default.toml"  # the default job, a config file
COMPUTE_KEYS = ("device", "precision", "workers")  # [pipeline]'s; the stages' own sections do not take them


def load_config(path: Path | None) -> dict:
    """The default job (configs/default.toml) with the user's config laid over it key by key, every section
    checked against its stage's declared options (options.py): unknown keys, types and ranges are one line naming
    ``FILE: [section] key``; keys neither file sets take the declared defaults. Returns the checked config, each
    section under the stage config's field names."""
    merged = read_toml(DEFAULT_CONFIG_PATH, "pipeline config")
    where = str(path) if path is not None else str(DEFAULT_CONFIG_PATH)
    if path is not None:
        user = read_toml(path, "pipeline config")
        unknown = sorted(set(user) - set(SECTIONS))
        if unknown:
            raise MobileReIDError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
        merged = deep_merge(merged, user)
    return check_config(merged, where)


def _is_str(value) -> str | None:
    return None if isinstance(value, str) else "expected a string"


def _names(value) -> str | None:
    ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(n, str) for n in value))
    return None if ok else "expected a model name or a list of names"


def _targets(value) -> str | None:
    ok = isinstance(value, dict) and all(
        isinstance(v, list) and all(isinstance(t, str) for t in v) for v in value.values()
    )
    return None if ok else "expected a table of [models.NAME] = [target, ...]"


def _is_bool(value) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


SECTIONS = ("data", "models", "compress", "quant_finetune", "export", "evaluate", "pipeline")


def check_config(cfg: dict, where: str) -> dict:
    from .options import (
        CompressConfig,
        EvaluateOptions,
        ExportOptions,
        PipelineOptions,
        QuantFinetuneConfig,
        SynthOptions,
        TrainConfig,
    )

    stage = COMPUTE_KEYS + ("threads",)  # set per run by [pipeline] and the core share
    out = {
        "data": section_from_table(
            SynthOptions,
            cfg.get("data", {}),
            where,
            "data",
            extra={"synthetic": (_is_bool, True), "root": (_is_str, "")},
        ),
        "compress": section_from_table(
            CompressConfig, cfg.get("compress", {}), where, "compress", extra={"model": (_is_str, "")}, exclude=stage
        ),
        "quant_finetune": section_from_table(
            QuantFinetuneConfig,
            cfg.get("quant_finetune", {}),
            where,
            "quant_finetune",
            extra={"model": (_names, "")},
            exclude=stage,
        ),
        "export": section_from_table(
            ExportOptions, cfg.get("export", {}), where, "export", extra={"targets": (_targets, {})}
        ),
        "evaluate": section_from_table(EvaluateOptions, cfg.get("evaluate", {}), where, "evaluate"),
        "pipeline": section_from_table(PipelineOptions, cfg.get("pipeline", {}), where, "pipeline"),
    }
    models = cfg.get("models")
    if not isinstance(models, dict) or not models:
        raise MobileReIDError(f"{where}: [models] = {models!r}: expected one or more [models.NAME] tables")
    out["models"] = {}
    for name, table in models.items():
        if not isinstance(table, dict) or "preset" not in table:
            raise MobileReIDError(f'{where}: [models.{name}] needs preset = "NAME" (a model preset)')
        out["models"][name] = section_from_table(TrainConfig, table, where, f"models.{name}", exclude=stage)
    guard = QuantFinetuneConfig(**{k: v for k, v in out["quant_finetune"].items() if k != "model"}).guard_problem()
    if guard:
        raise MobileReIDError(f"{where}: [quant_finetune] {guard}")
    split = SynthOptions(**{k: v for k, v in out["data"].items() if k not in ("synthetic", "root")}).split_problem()
    if out["data"]["synthetic"] and split:  # test_ids may be the default job's (100) under a config's smaller ids
        raise MobileReIDError(f"{where}: [data] {split}")
    chains = out["pipeline"]["chains"]
    if not all(isinstance(n, str) and n in out["models"] for n in chains):
        raise MobileReIDError(
            f"{where}: [pipeline] chains = {chains!r}: "
            f"expected names of [models.NAME] tables ({', '.join(out['models'])})"
        )
    from .compute import resolve

    try:  # before any stage: a bad device is one line now, not a CUDA error after the data stage
        resolve(**compute_options(out))
    except MobileReIDError as exc:
        raise MobileReIDError(f"{where}: [pipeline] {str(exc).lstrip('-')}") from None
    return out


def compute_options(cfg: dict) -> dict:
    """``[pipeline]``'s device, precision and workers as the learning stages' config fields take them."""
    return {key: cfg["pipeline"][key] for key in COMPUTE_KEYS}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _recipes_digest() -> str:
    """The shipped INT8 recipes (mobilereid/recipes/*.toml): an export made with other recipes is out of date."""
    from .export.recipes import RECIPE_DIR

    return _digest({p.name: _file_digest(p) for p in sorted(RECIPE_DIR.glob("*.toml"))})


def _file_digest(path: Path) -> str:
    from .models.checkpoint import file_sha256

    return file_sha256(path)[:16]


class Stage:
    """A stage folder with a stamp: `fresh(key)` says whether its outputs are up to date for that key.

    The pipeline deletes a stage folder to re-run it only when it made that folder itself (it holds STAGE_MARK); a
    folder of that name the user made (their dataset under ``W/data``, a ``-w .`` inside a project) is never
    touched: the run stops with a one-line error instead. An empty folder is taken over.

    The stamp lists every file the stage left in its folder with its size (``files``): a stage whose files were
    deleted or damaged after it finished (an artifact removed by hand) re-runs instead of being "up to date" and
    failing every later stage. A stamp of an older version without the list checks ``outputs`` alone."""

    def __init__(self, workdir: Path, name: str):
        self.name, self.dir = name, workdir / name
        self.stamp = self.dir / "stamp.json"

    def check_owned(self) -> None:
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise MobileReIDError(
                f"{self.dir}: exists and is not a folder the pipeline made; refusing to replace it "
                "(move it away or choose another --workdir)"
            )
        if self.dir.is_dir() and not (self.dir / STAGE_MARK).is_file() and any(self.dir.iterdir()):
            raise MobileReIDError(
                f"{self.dir}: exists and was not made by `mobilereid pipeline`; refusing to delete it "
                "(move it away or choose another --workdir)"
            )

    def fresh(self, key: str, outputs: list[Path]) -> bool:
        self.check_owned()
        if not (self.dir / STAGE_MARK).is_file() or not self.stamp.is_file() or not all(p.exists() for p in outputs):
            return False
        try:
            stamp = json.loads(self.stamp.read_text())
            files = stamp.get("files", {})
            return stamp.get("key") == key and all(_size(self.dir / name) == size for name, size in files.items())
        except (ValueError, AttributeError, TypeError):
            return False  # a damaged stamp: the stage re-runs

    def start(self, key: str) -> None:
        self.check_owned()
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        (self.dir / STAGE_MARK).write_text(
            "made by mobilereid pipeline; the pipeline may delete and rebuild this folder\n"
        )
        console.print(f"[{self.name}] running", markup=False)

    def done(self, key: str, info: dict, seconds: float) -> None:
        self.stamp.write_text(json.dumps({"key": key, "seconds": seconds, **info, "files": self.written()}, indent=2))

    def written(self) -> dict[str, int]:
        """Every file in the stage's folder (relative name: size) but the stamp and hidden files (the owner mark, a
        lock, temporary files)."""
        files = {}
        for p in sorted(self.dir.rglob("*")):
            name = p.relative_to(self.dir)
            if p != self.stamp and not any(part.startswith(".") for part in name.parts) and p.is_file():
                files[name.as_posix()] = p.stat().st_size
        return files

    def info(self) -> dict:
        """The stamp without its file list (the report shows what a stage did, not its thousands of images)."""
        stamp = json.loads(self.stamp.read_text())
        stamp.pop("files", None)
        return stamp


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def run_stage(stage: Stage, key: str, outputs: list[Path], fn) -> dict:
    if stage.fresh(key, outputs):
        console.print(f"[{stage.name}] up to date, skipped", markup=False)
        return {**stage.info(), "skipped": True}
    stage.start(key)
    core_share.rebalance()  # the cores of chains that finished (cores.py)
    t0 = time.perf_counter()
    info = fn() or {}
    stage.done(key, info, time.perf_counter() - t0)
    console.print(f"[{stage.name}] done in {time.perf_counter() - t0:.0f} s", markup=False)
    return stage.info()


def compressed_chain(name: str) -> str:
    """The name a model chain takes after compression: its later stage folders are named after it."""
    return f"{name}_compressed"


def run_pipeline(config: Path | None, workdir: Path) -> dict:
    cfg = load_config(config)
    chains = list(cfg["models"]) + ([compressed_chain(cfg["compress"]["model"])] if cfg["compress"]["model"] else [])
    workdir.mkdir(parents=True, exist_ok=True)
    with folder_lock(workdir, "work folder"):  # a second run on this folder would delete this one's stage folders
        stage_names = [f"{stage}_{m}" for m in chains for stage in ("train", "quant_finetune", "export", "evaluate")]
        for name in ["data"] + stage_names + ["compress"]:
            Stage(workdir, name).check_owned()  # before any work: never after ten minutes of training
        return _run_locked(cfg, workdir)


def _run_locked(cfg: dict, workdir: Path) -> dict:
    from .data.check import check_and_print
    from .data.synth import SynthConfig, generate
    from .report import write_pipeline_report

    t_start = time.perf_counter()
    stages = {}

    # 1. data
    d = cfg["data"]
    if d.get("synthetic", True):
        data_stage = Stage(workdir, "data")
        data_root = data_stage.dir / "synth"
        synth = SynthConfig(**{k: v for k, v in d.items() if k not in ("synthetic", "root")})

        def make_data():
            generate(data_root, synth)
            return {"images": sum(1 for _ in data_root.rglob("*.jpg"))}

        stages["data"] = run_stage(data_stage, _digest(synth.__dict__), [data_root], make_data)
        data_key = stages["data"]["key"]
    else:
        data_root = Path(d["root"])
        data_key = _digest({"root": str(data_root.resolve())})
    check_and_print(data_root, images=False)

    # 2.-5. one chain per model (train -> [compress] -> export -> evaluate); chains are independent
    names = cfg["pipeline"]["chains"] or list(cfg["models"])
    if cfg["pipeline"]["parallel"] and len(names) > 1:
        chains = _run_chains_in_parallel(names, cfg, workdir, data_root, data_key)
    else:
        chains = {n: run_chain(n, cfg, workdir, data_root, data_key) for n in names}
    reports = {}
    for n in names:
        stages.update(chains[n]["stages"])
        reports.update(chains[n]["reports"])

    # 6. report
    final = {
        "config": cfg,
        "workdir": str(workdir),
        "stages": stages,
        "evaluations": reports,
        "wall_seconds": time.perf_counter() - t_start,
    }
    path = write_pipeline_report(final, workdir / "report")
    console.print((path / "report.md").read_text(), markup=False, soft_wrap=True)
    console.print(f"final report: {path / 'report.html'} (also report.md, report.json; plots in {path})")
    return final


def run_chain(name: str, cfg: dict, workdir: Path, data_root: Path, data_key: str) -> dict:
    """Train one model, compress it and quantization-fine-tune it if the config says so, export it and evaluate its
    artifacts against the trained float model (the headline) and against the float model that was exported."""
    from .compress.pipeline import CompressConfig, compress
    from .evaluate import evaluate_artifacts
    from .export import export_checkpoint
    from .quant_finetune import QuantFinetuneConfig, quant_finetune
    from .train import TrainConfig, train

    stages = {}
    m = cfg["models"][name]
    stage = Stage(workdir, f"train_{name}")
    compute = compute_options(cfg)
    tcfg = TrainConfig(**m, **compute)
    ckpt = reference = users_model = stage.dir / "model.pt"  # the trained float model: the drift baseline
    stages[stage.name] = run_stage(
        stage,
        _digest({"data": data_key, "train": tcfg.__dict__}),
        [ckpt],
        lambda: {"metrics": train(tcfg, data_root, stage.dir)["metrics"]},
    )
    trained_metrics = stages[stage.name].get("metrics")  # of model.pt on this data's query/gallery
    targets = cfg["export"]["targets"].get(name) or []

    c = dict(cfg["compress"])
    if c.pop("model") == name:
        stage = Stage(workdir, "compress")
        source = ckpt
        ckpt = reference = stage.dir / "compressed.pt"

        def do_compress():
            result = compress(source, data_root, stage.dir, CompressConfig(**c, **compute))
            return {"before": result["before"], "after": result["after"]}

        stages[stage.name] = run_stage(
            stage,
            _digest({"source": _file_digest(source), "data": data_key, "compress": c, "compute": compute}),
            [ckpt],
            do_compress,
        )
        name = compressed_chain(name)

    q = dict(cfg["quant_finetune"])
    chosen = q.pop("model")
    if name in (chosen if isinstance(chosen, list) else [chosen]):
        stage = Stage(workdir, f"quant_finetune_{name}")
        source = ckpt
        ckpt = reference = stage.dir / "model.pt"  # same artifact names as without the stage

        trained = trained_metrics if source == users_model else None  # the same weights on the same split, scored once

        def do_quant_finetune():
            qcfg = QuantFinetuneConfig(**q, **compute)
            result = quant_finetune(source, data_root, ckpt, qcfg, metrics_before=trained)
            return {
                "before": result["metrics_before"],
                "after": result["metrics_after"],
                "history": result["history"],
                "guard": result["guard"],
            }

        stages[stage.name] = run_stage(
            stage,
            _digest({"source": _file_digest(source), "data": data_key, "quant_finetune": q, "compute": compute}),
            [ckpt],
            do_quant_finetune,
        )

    if not targets:
        console.print(f"[{name}] no export targets configured: export and evaluation skipped", markup=False)
        return {"stages": stages, "reports": {}}
    stage = Stage(workdir, f"export_{name}")

    def do_export():
        # the longest targets in two processes once this chain has two cores (the other chain has finished; alone:
        # the machine's)
        results = export_checkpoint(
            ckpt,
            ",".join(targets),
            data_root,
            stage.dir,
            int8=True,
            threads=cfg["export"]["threads"],
            board=cfg["export"]["board"],
            core_free=lambda: (core_share.share() or os.cpu_count() or 1) >= 2,
        )
        from .export.tflm.target import tflm_notes

        return {
            "artifacts": [r["artifact"].name for r in results],
            "below_drift_budget": [r["artifact"].name for r in results if not r["verification"]["passed"]],
            "notes": [line for r in results if "tflm" in r for line in tflm_notes(r["tflm"])],
        }

    stages[stage.name] = run_stage(
        stage,
        _digest(
            {
                "ckpt": _file_digest(ckpt),
                "targets": targets,
                "data": data_key,
                "recipes": _recipes_digest(),
                **({"board": cfg["export"]["board"]} if "tflm" in targets else {}),
            }
        ),
        [stage.dir],
        do_export,
    )
    artifacts = [stage.dir / a for a in stages[stage.name]["artifacts"]]

    stage = Stage(workdir, f"evaluate_{name}")

    def do_eval():
        evaluate_artifacts(
            artifacts,
            data_root,
            stage.dir,
            reference=reference,
            device=cfg["evaluate"]["device"],
            threads=cfg["evaluate"]["threads"],
            baseline=users_model if reference != users_model else None,
            limit=cfg["evaluate"]["limit"] or None,
            far=cfg["evaluate"]["far"],
            gallery_formats=cfg["evaluate"]["gallery_formats"],
            torch_device=compute["device"],
        )
        return {"report": str(stage.dir / "report.json")}

    key = _digest(
        {
            "artifacts": [_file_digest(a) for a in artifacts],
            "ckpt": _file_digest(reference),
            "eval": cfg["evaluate"],
            "torch_device": compute["device"],
            "data": data_key,
            "baseline": _file_digest(users_model),
        }
    )
    stages[stage.name] = run_stage(stage, key, [stage.dir / "report.json"], do_eval)
    return {"stages": stages, "reports": {name: json.loads((stage.dir / "report.json").read_text())}}


def _run_chains_in_parallel(names: list[str], cfg: dict, workdir: Path, data_root: Path, data_key: str) -> dict:
    """One process per chain, the CPU cores split between them.

    Why: a chain alternates multi-threaded stages (training) with stages that are mostly single-threaded Python
    (onnx2tf, the TF and ExecuTorch converters, verification), so two chains side by side keep both cores busy
    where one after the other leaves one idle for most of the export time. Each chain logs to
    ``<workdir>/logs/<model>.log``; the last line of each log is shown here every 20 s.

    An interrupt here (Ctrl-C, SIGTERM) or a failed chain stops the chains still running: each gets SIGTERM, unwinds
    (its temporary files go) and ends; one that has not ended STOP_SECONDS later is killed. The workers die with
    this process even when it is killed (lifecycle.py), and the count of chains still running is shared memory, not
    a manager process that would outlive a killed run.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from .lifecycle import end_on_interrupt

    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    cores = os.cpu_count() or 2
    console.print(
        f"running {len(names)} model chains side by side ({max(1, cores // len(names))} torch thread(s) each, "
        f"the cores of a finished chain go to those still running); logs in {logs}/",
        markup=False,
    )
    results = {}
    context = multiprocessing.get_context("spawn")
    running = context.Value("i", len(names))  # chains still running: each takes cores // running threads (cores.py)
    pool = ProcessPoolExecutor(
        len(names), mp_context=context, initializer=_chain_worker_start, initargs=(running, os.getpid())
    )
    try:
        futures = {
            pool.submit(
                end_on_interrupt, _chain_in_child, n, cfg, workdir, data_root, data_key, logs / f"{n}.log", cores
            ): n
            for n in names
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=20, return_when=FIRST_COMPLETED)
            running.value = len(pending)
            for f in done:
                n = futures[f]
                try:
                    results[n] = f.result()
                except MobileReIDError as exc:
                    raise MobileReIDError(f"{n}: {exc} (log: {logs / (n + '.log')})") from None
                except Exception as exc:
                    raise MobileReIDError(
                        f"{n} chain failed: {type(exc).__name__}: {exc} (log: {logs / (n + '.log')})"
                    ) from None
                for stage_name, info in results[n]["stages"].items():
                    what = "up to date, skipped" if info.get("skipped") else f"done in {info['seconds']:.0f} s"
                    console.print(f"[{stage_name}] {what}", markup=False)
            for f in pending:
                n = futures[f]
                console.print(f"[{n}] {_last_line(logs / (n + '.log'))}", markup=False)
    except BaseException:
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


STOP_SECONDS = 60  # a chain's clean-up may stop the export's second process, which gets 30 s (second_process.py)


def _stop_workers(pool) -> None:
    """SIGTERM to every chain worker still alive (one already unwinding from Ctrl-C ignores it: interrupts.py), then
    SIGKILL to those not ended within STOP_SECONDS. The pool has no public way to end its workers before 3.14, hence
    its ``_processes``."""
    workers = [p for p in (getattr(pool, "_processes", None) or {}).values() if p.is_alive()]
    for p in workers:
        p.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in workers:
        if p.is_alive():
            p.kill()
            p.join()


def _last_line(path: Path) -> str:
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "starting"
    return lines[-1][:150] if lines else "starting"


_running = None  # the parent's count of chains still running, in a chain worker (_chain_worker_start)


def _chain_worker_start(running, parent: int) -> None:
    """Pool initializer of a chain worker: it dies with the pipeline process, SIGTERM unwinds its chain and ends it
    (lifecycle.py; its task runs in end_on_interrupt)."""
    global _running
    from .lifecycle import die_with_parent

    die_with_parent(parent)
    _running = running


def _chain_in_child(name, cfg, workdir, data_root, data_key, log: Path, cores: int) -> dict:
    """Child-process entry: all output (Python and native) into the chain's log, torch limited to its share of the
    cores (``cores`` // the chains still running, re-read between epochs and stages: cores.py)."""
    import sys

    from .chatter import silence_libraries

    f = open(log, "a", buffering=1)
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
    sys.stdout = sys.stderr = f
    silence_libraries(python_stderr=f)  # native chatter out of the log, so the live status shows the stage's progress
    running = _running
    core_share.follow(lambda: cores // max(1, running.value))
    return run_chain(name, cfg, workdir, data_root, data_key)
