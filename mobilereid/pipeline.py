"""`mobilereid pipeline [CONFIG.toml]`: the whole job in one command.

Stages: data (synthetic by default, or a real dataset path) -> train SCL-net and a small ViT -> compress the ViT
(patch elimination, AMG heads and K/V tokens) -> export INT8 for every target -> evaluate every artifact against
its float model -> one final report (Markdown + JSON + plots).

Re-runs skip a stage whose inputs have not changed: each stage writes ``<workdir>/<stage>/stamp.json`` holding a
hash of its configuration and of the files it consumed; a stage re-runs when that hash differs or its outputs are
missing. The default configuration (DEFAULT_CONFIG) is sized to finish in about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from pathlib import Path

from .console import console
from .errors import MobileReIDError
from .tomlconfig import deep_merge, read_toml

DEFAULT_CONFIG = {
    "data": {"synthetic": True, "ids": 100, "cameras": 6, "seed": 0, "height": 256, "width": 128, "root": ""},
    "models": {
        "sclnet": {"preset": "sclnet_small", "epochs": 40, "lr": 1e-3, "p": 16, "k": 4, "options": {}},
        "vit": {"preset": "vit_tiny", "epochs": 40, "lr": 3e-4, "p": 16, "k": 4, "options": {"img_size": [128, 64], "gelu": "tanh"}},
    },
    "compress": {"model": "vit", "keep_ratio": 0.75, "head_ratio": 0.25, "token_rate": 0.2, "rounds": 2, "epochs_per_round": 2,
                 "arch_epochs": 2, "token_epochs": 1, "final_epochs": 3, "lr": 1e-4},
    "export": {"threads": 2, "targets": {"sclnet": ["onnx", "executorch", "tflite", "edgetpu"], "vit": ["onnx", "executorch", "tflite"]}},
    "evaluate": {"threads": 2, "device": "local"},
}


def load_config(path: Path | None) -> dict:
    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    user = read_toml(path, "pipeline config")
    unknown = set(user) - set(DEFAULT_CONFIG)
    if unknown:
        raise MobileReIDError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_CONFIG)}")
    return deep_merge(DEFAULT_CONFIG, user)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    from .models.checkpoint import file_sha256

    return file_sha256(path)[:16]


class Stage:
    """A stage folder with a stamp: `fresh(key)` says whether its outputs are up to date for that key."""

    def __init__(self, workdir: Path, name: str):
        self.name, self.dir = name, workdir / name
        self.stamp = self.dir / "stamp.json"

    def fresh(self, key: str, outputs: list[Path]) -> bool:
        if not self.stamp.is_file() or not all(p.exists() for p in outputs):
            return False
        return json.loads(self.stamp.read_text()).get("key") == key

    def start(self, key: str) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        console.print(f"[{self.name}] running", markup=False)

    def done(self, key: str, info: dict, seconds: float) -> None:
        self.stamp.write_text(json.dumps({"key": key, "seconds": seconds, **info}, indent=2))

    def info(self) -> dict:
        return json.loads(self.stamp.read_text())


def run_stage(stage: Stage, key: str, outputs: list[Path], fn) -> dict:
    if stage.fresh(key, outputs):
        console.print(f"[{stage.name}] up to date, skipped", markup=False)
        return stage.info()
    stage.start(key)
    t0 = time.perf_counter()
    info = fn() or {}
    stage.done(key, info, time.perf_counter() - t0)
    console.print(f"[{stage.name}] done in {time.perf_counter() - t0:.0f} s", markup=False)
    return stage.info()


def run_pipeline(config: Path | None, workdir: Path) -> dict:
    from .cli import check_and_print
    from .compress.pipeline import CompressConfig, compress
    from .data.synth import SynthConfig, generate
    from .evaluate import evaluate_artifacts
    from .export import export_checkpoint
    from .report import write_pipeline_report
    from .train import TrainConfig, train

    cfg = load_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stages = {}

    # 1. data
    d = cfg["data"]
    if d.get("synthetic", True):
        data_stage = Stage(workdir, "data")
        data_root = data_stage.dir / "synth"
        synth = SynthConfig(ids=d["ids"], cameras=d["cameras"], seed=d["seed"], height=d["height"], width=d["width"])

        def make_data():
            generate(data_root, synth)
            return {"images": sum(1 for _ in data_root.rglob("*.jpg"))}

        stages["data"] = run_stage(data_stage, _digest(synth.__dict__), [data_root], make_data)
        data_key = stages["data"]["key"]
    else:
        data_root = Path(d["root"])
        data_key = _digest({"root": str(data_root.resolve())})
    check_and_print(data_root, images=False)

    # 2. train
    ckpts = {}
    for name, m in cfg["models"].items():
        stage = Stage(workdir, f"train_{name}")
        tcfg = TrainConfig(model=m["preset"], epochs=m["epochs"], lr=m["lr"], p=m["p"], k=m["k"], model_options=m.get("options", {}))
        key = _digest({"data": data_key, "train": tcfg.__dict__})
        ckpts[name] = stage.dir / "model.pt"
        stages[f"train_{name}"] = run_stage(stage, key, [ckpts[name]],
                                            lambda tcfg=tcfg, stage=stage: {"metrics": train(tcfg, data_root, stage.dir)["metrics"]})

    # 3. compress
    c = dict(cfg["compress"])
    target_model = c.pop("model")
    if target_model:
        stage = Stage(workdir, "compress")
        source = ckpts[target_model]
        key = _digest({"source": _file_digest(source), "data": data_key, "compress": c})
        out = stage.dir / "compressed.pt"

        def do_compress():
            result = compress(source, data_root, stage.dir, CompressConfig(**c))
            return {"before": result["before"], "after": result["after"]}

        stages["compress"] = run_stage(stage, key, [out], do_compress)
        ckpts[f"{target_model}_compressed"] = out
        export_targets = dict(cfg["export"]["targets"])
        export_targets[f"{target_model}_compressed"] = export_targets.pop(target_model)
    else:
        export_targets = dict(cfg["export"]["targets"])

    # 4. export
    artifacts: dict[str, list[Path]] = {}
    for name, targets in export_targets.items():
        stage = Stage(workdir, f"export_{name}")
        ckpt = ckpts[name]
        key = _digest({"ckpt": _file_digest(ckpt), "targets": targets, "data": data_key})

        def do_export(ckpt=ckpt, targets=targets, stage=stage):
            failures = []
            results = export_checkpoint(ckpt, ",".join(targets), data_root, stage.dir, int8=True, threads=cfg["export"]["threads"])
            for r in results:
                if not r["verification"]["passed"]:
                    failures.append(r["artifact"].name)
            return {"artifacts": [r["artifact"].name for r in results], "below_drift_budget": failures}

        stages[f"export_{name}"] = run_stage(stage, key, [stage.dir], do_export)
        artifacts[name] = [stage.dir / a for a in stages[f"export_{name}"]["artifacts"]]

    # 5. evaluate
    reports = {}
    for name, arts in artifacts.items():
        stage = Stage(workdir, f"evaluate_{name}")
        key = _digest({"artifacts": [_file_digest(a) for a in arts], "ckpt": _file_digest(ckpts[name]), "eval": cfg["evaluate"], "data": data_key})

        def do_eval(arts=arts, name=name, stage=stage):
            evaluate_artifacts(arts, data_root, stage.dir, reference=ckpts[name], device=cfg["evaluate"]["device"],
                                        threads=cfg["evaluate"]["threads"])
            return {"report": str(stage.dir / "report.json")}

        stages[f"evaluate_{name}"] = run_stage(stage, key, [stage.dir / "report.json"], do_eval)
        reports[name] = json.loads((stage.dir / "report.json").read_text())

    # 6. report
    final = {"config": cfg, "workdir": str(workdir), "stages": stages, "evaluations": reports,
             "wall_seconds": time.perf_counter() - t_start}
    path = write_pipeline_report(final, workdir / "report")
    console.print((path / "report.md").read_text(), markup=False, soft_wrap=True)
    console.print(f"final report: {path / 'report.md'} (JSON: {path / 'report.json'}; plots in {path})")
    return final
