"""`mobilereid compress`: patch elimination, windows, AMG head pruning, MLP hidden-unit pruning and AMG K/V token
pruning, in this order.

Order and why: (1) patch elimination and windows change which tokens exist, so they come first and are
fine-tuned before any statistics are taken; (2) head pruning in rounds of {attention statistics -> remove
1/rounds of the target -> fine-tune with distillation from the uncompressed model (CE + triplet + 0.2 KL, T=1)}
as the official AMG schedule does (24 rounds there; configurable here); (3) MLP hidden units by first-order Taylor
importance (`mlp.py`), then fine-tuning; (4) K/V token pruning from gradient scores on the pruned model, then
fine-tuning (scored last, so its static indices are chosen on the final block shapes); (5) final fine-tuning
epochs. Every step is optional. Every fine-tuning step also pulls the student's deployed embedding towards the
uncompressed model's (``compat_weight * (1 - cos)``, `losses.compatibility_loss`): without it the fine-tuning is free
to rotate the embedding space, and a gallery enrolled with the user's model no longer matches (measured on
``make run``'s ViT: cosine 0.78 to the user's model; the weight's trade-off: docs/compatibility.md).
The result is a plain checkpoint (no masks, no hooks) that `load_checkpoint`
rebuilds and `torch.export` accepts.

Statistics (attention entropy for heads, gradient scores for K/V tokens) come from a pass over the whole training
split, as AMG's code does, unless ``stat_images`` caps it (evenly spaced images, for quick runs).
Architecture changes (patch elimination, windows) come before any K/V pruning: a K/V index is a position in the
token layout of its block, so changing the layout of a K/V-pruned checkpoint is refused rather than misindexed.
Devices, precision and ranks as in `train` (`compute.py`, `distributed.py`): fine-tuning runs data-parallel under
torchrun; the statistics passes and the pruning choices run on rank 0 and are broadcast, so every rank cuts the
same weights; surgery builds CPU modules, which are moved back to the device.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..compute import CPU, Compute, activate, local_rank, resolve
from ..console import console, progress, table
from ..data.datasets import load_dataset
from ..data.torchdata import PKBatches, PKLoader, ReIDImages
from ..embeddings import evaluate_model, preprocess_spec_for
from ..errors import MobileReIDError
from ..flops import count_macs, count_params
from ..losses import deployed_embedding
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.vit import ViTReID, separate_window_weights
from ..options import CompressConfig
from ..settings import check_cli
from ..train import lr_at, train_one_epoch
from .heads import choose_heads, prune_heads, schedule, total_heads
from .mlp import mlp_unit_scores, prune_mlp_units, units_to_keep
from .tokens import prune_kv_tokens, slots_to_keep, token_scores


def with_architecture(
    model: ViTReID,
    keep_ratio: float | None,
    scorer: str,
    windows: int | None,
    window_start: int,
    window_weights: str = "shared",
    token_order: str = "spatial",
) -> ViTReID:
    """The model with patch elimination and/or windows switched on, its trained weights carried over. Separate window
    weights start as copies of the shared blocks they replace (every window begins where the global model was)."""
    cfg = copy.deepcopy(model.cfg)
    if any(k is not None for k in cfg.kv_index):
        raise MobileReIDError(
            "this checkpoint's key/value tokens are already pruned: its K/V indices are positions in the "
            "current token layout, and patch elimination or windows would change that layout; compress "
            "the checkpoint from before K/V pruning instead"
        )
    if keep_ratio is not None:
        cfg.keep_ratio, cfg.scorer, cfg.token_order = keep_ratio, scorer, token_order
    if windows is not None:
        if cfg.windows > 1:
            raise MobileReIDError(
                f"this checkpoint already runs {cfg.windows} windows; windows cannot be changed again"
            )
        cfg.windows, cfg.window_start = windows, window_start
    try:
        new = ViTReID(type(cfg)(**cfg.to_dict()))
    except ValueError as exc:
        raise MobileReIDError(str(exc)) from None
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    allowed = ("scorer.", "window_embed")
    bad = [k for k in list(missing) + list(unexpected) if not k.startswith(allowed)]
    if bad:
        raise MobileReIDError(f"cannot change the architecture of this checkpoint (weights differ at {bad[:3]})")
    if windows is not None and windows > 1 and window_weights == "separate":
        new = separate_window_weights(new)
    new.preset = getattr(model, "preset", None)
    new.train(model.training)
    return new


def summarize(model: ViTReID, metrics: dict | None) -> dict:
    cfg = model.cfg
    tokens = [len(k) if k is not None else None for k in cfg.kv_index]
    return {
        "params": count_params(model),
        "gmacs": count_macs(model) / 1e9,
        "heads_per_layer": list(cfg.heads_per_layer),
        "mlp_hidden_per_layer": list(cfg.mlp_hidden_per_layer),
        "kv_tokens_per_layer": tokens,
        "patch_tokens_kept": sum(cfg.kept_per_group()),
        "patch_tokens": cfg.num_patches,
        "windows": cfg.windows,
        **(metrics or {}),
    }


def _neck(model: ViTReID):
    """The BN-neck whose output the model exports, or None when it exports the features before it."""
    return model.bottleneck if model.cfg.neck_feat == "after" else None


def _logits_and_embedding(teacher: ViTReID, x, cam):
    """The uncompressed model's ID logits (the KL target) and its deployed embedding (the compatibility target)."""
    feat = teacher.forward_features(x, cam)
    bn = teacher.bottleneck(feat)
    return teacher.classifier(bn), deployed_embedding(_neck(teacher), feat)


class Finetuner:
    def __init__(
        self, ds, cfg: CompressConfig, teacher: ViTReID, compute: Compute = CPU, rank: int = 0, world: int = 1
    ):
        self.ds, self.cfg, self.compute, self.rank, self.world = ds, cfg, compute, rank, world
        self.labels = ds.train_labels()
        self.spec = preprocess_spec_for(teacher)
        self.images = ReIDImages(ds.train, self.spec, self.labels, augment=True, ranks_on_host=local_rank()[1])
        teacher = copy.deepcopy(teacher).eval()  # its own copy: surgery moves the student to the CPU and back in place
        self.teacher = lambda x, cam: _logits_and_embedding(teacher, x, cam)
        self.epoch = 0
        self.uses_camera = teacher.uses_camera
        self.sampler = PKBatches(ds.train, cfg.p, cfg.k, cfg.seed, rank, world)
        if len(self.sampler) == 0:
            raise MobileReIDError(
                f"{ds.root}: too few identities with images for batches of P={cfg.p} x K={cfg.k}"
                f"{f' on {world} ranks' if world > 1 else ''}"
            )
        self.loader = PKLoader(self.images, self.sampler, cfg.seed, compute.workers, pin=compute.cuda)
        n = len(ds.train) if cfg.stat_images == 0 else min(cfg.stat_images, len(ds.train))
        self.stat_indices = np.unique(np.linspace(0, len(ds.train) - 1, n).round().astype(int))
        self.plain = self.images.unaugmented()

    def stat_batches(self, with_labels: bool = False, size: int = 32):
        """The statistics images in batches on the device (decoded as they are used: the whole split need not fit
        in memory)."""
        put = self.compute.put
        for s in range(0, len(self.stat_indices), size):
            chunk = [self.plain[int(i)] for i in self.stat_indices[s : s + size]]
            x = put(torch.stack([c[0] for c in chunk]))
            extra = (put(torch.tensor([c[2] for c in chunk])),) if self.uses_camera else ()  # SIE: each image's camera
            yield (
                (x, put(torch.tensor([c[1] for c in chunk])), *extra) if with_labels else ((x, *extra) if extra else x)
            )

    def run(self, model: ViTReID, epochs: int, what: str) -> None:
        if epochs <= 0:
            return
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.cfg.lr, weight_decay=1e-3)
        scaler = self.compute.scaler()
        train_model = distributed.wrap(model, self.compute)
        for e in range(epochs):
            steps = len(self.sampler)
            total = epochs * steps
            with progress(f"fine-tune ({what}) {e + 1}/{epochs}", steps, show=self.rank == 0) as advance:
                out = train_one_epoch(
                    train_model,
                    self.loader.epoch(self.epoch),
                    opt,
                    lambda i, e=e: lr_at(e * steps + i, total, 0, self.cfg.lr),
                    uses_cam=self.uses_camera,
                    teacher=self.teacher,
                    distill_weight=self.cfg.distill_weight,
                    compat_weight=self.cfg.compat_weight,
                    student_embedding=partial(deployed_embedding, _neck(model)),
                    on_step=advance,
                    compute=self.compute,
                    scaler=scaler,
                )
            self.epoch += 1
            if self.rank == 0:
                console.print(
                    f"  {what}: loss {out['loss']:.3f}  id-acc {out['acc']:.3f}  {out['seconds']:.1f} s "
                    f"(data wait {out['data_wait']:.1f} s)"
                )
        model.eval()


def compress(
    checkpoint: str | Path, data: str | Path, out: str | Path, cfg: CompressConfig, evaluate: bool = True
) -> dict:
    try:
        return _compress(checkpoint, data, out, cfg, evaluate)
    except ValueError as exc:
        raise MobileReIDError(str(exc)) from None


def _compress(checkpoint, data, out, cfg: CompressConfig, evaluate: bool) -> dict:
    check_cli(cfg)
    compute = resolve(cfg.device, cfg.precision, cfg.workers)
    torch.manual_seed(cfg.seed)
    model, state = load_checkpoint(checkpoint)
    if not isinstance(model, ViTReID):
        raise MobileReIDError(f"{checkpoint}: compression applies to ViT checkpoints (this is {state['family']})")
    if model.cfg.num_classes <= 0:
        raise MobileReIDError(f"{checkpoint}: has no ID classifier; compression fine-tunes with the training losses")
    ds = load_dataset(data)
    if len(ds.train_labels()) != model.cfg.num_classes:
        raise MobileReIDError(
            f"{checkpoint}: trained for {model.cfg.num_classes} identities, {data} has {len(ds.train_labels())}"
        )
    n_heads = total_heads(model)
    n_remove = int(round(n_heads * cfg.head_rate))
    if n_remove > n_heads - len(model.all_blocks()):
        raise MobileReIDError(
            f"--head-rate {cfg.head_rate} removes {n_remove} of {n_heads} heads, but each of the "
            f"{len(model.all_blocks())} layers keeps one: at most {n_heads - len(model.all_blocks())} can go"
        )
    activate(compute)
    rank, world = distributed.start(compute)
    main = rank == 0
    say = console.print if main else (lambda *a, **k: None)
    say(f"compressing on {compute.describe()}{f', {world} ranks' if world > 1 else ''}")
    t0 = time.perf_counter()
    device = compute.device
    model = model.to(device)
    tuner = Finetuner(ds, cfg, model, compute, rank, world)
    before = summarize(model, evaluate_model(model, ds, compute=compute) if evaluate and main else None)
    steps = []
    if cfg.keep_ratio is not None or cfg.windows is not None:
        model = with_architecture(
            model.cpu(), cfg.keep_ratio, cfg.scorer, cfg.windows, cfg.window_start, cfg.window_weights, cfg.token_order
        ).to(device)
        tuner.run(model, cfg.arch_epochs, "patch elimination / windows")
        steps.append({"step": "architecture", "keep_ratio": model.cfg.keep_ratio, "windows": model.cfg.windows})
    if n_remove:
        for r, n in enumerate(schedule(n_remove, cfg.rounds)):
            if n == 0:
                continue
            info = distributed.decide_once(lambda: choose_heads(model, tuner.stat_batches(), n))
            model = prune_heads(model.cpu(), info["removed"]).to(device)
            say(f"round {r + 1}/{cfg.rounds}: removed {n} heads -> heads per layer {model.cfg.heads_per_layer}")
            tuner.run(model, cfg.epochs_per_round, f"heads round {r + 1}")
            steps.append({"step": "heads", "round": r + 1, "removed": {str(k): v for k, v in info["removed"].items()}})
    if cfg.mlp_rate > 0:
        keep = distributed.decide_once(
            lambda: units_to_keep(mlp_unit_scores(model, tuner.stat_batches(with_labels=True)), cfg.mlp_rate)
        )
        model = prune_mlp_units(model.cpu(), keep).to(device)
        say(f"MLP hidden units kept per layer: {[len(k) for k in keep]}")
        tuner.run(model, cfg.mlp_epochs, "MLP units")
        steps.append({"step": "mlp_units", "kept": [len(k) for k in keep]})
    if cfg.token_rate > 0:
        keep = distributed.decide_once(
            lambda: slots_to_keep(
                token_scores(model, tuner.stat_batches(with_labels=True)),
                model.block_depths(),
                cfg.token_rate,
                current=model.cfg.kv_index,
            )
        )
        model = prune_kv_tokens(model.cpu(), keep).to(device)
        say(f"K/V tokens kept per layer: {[len(k) for k in keep]}")
        tuner.run(model, cfg.token_epochs, "K/V tokens")
        steps.append({"step": "kv_tokens", "kept": [len(k) for k in keep]})
    tuner.run(model, cfg.final_epochs, "final")
    model.eval()
    out = Path(out)
    result = {"checkpoint": str(out / "compressed.pt"), "ranks": world}  # what the other ranks return
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            out / "compressed.pt",
            model,
            {"compress_config": asdict(cfg), "source": str(checkpoint), "steps": steps, "compute": compute.record()},
        )
        after = summarize(model, evaluate_model(model, ds, compute=compute) if evaluate else None)
        result = {
            "before": before,
            "after": after,
            "config": asdict(cfg),
            "steps": steps,
            "seconds": time.perf_counter() - t0,
            "checkpoint": str(out / "compressed.pt"),
            "compute": compute.record(),
            "ranks": world,
        }
        (out / "compress_report.json").write_text(json.dumps(result, indent=2))
        print_compress_table(result)
    distributed.stop()
    return result


def print_compress_table(result: dict) -> None:
    b, a = result["before"], result["after"]
    rows = [
        ["parameters (M)", b["params"] / 1e6, a["params"] / 1e6],
        ["executed GMAC", b["gmacs"], a["gmacs"]],
        [
            "patch tokens kept",
            f"{b['patch_tokens_kept']}/{b['patch_tokens']}",
            f"{a['patch_tokens_kept']}/{a['patch_tokens']}",
        ],
        ["windows", b["windows"], a["windows"]],
        ["heads per layer", " ".join(map(str, b["heads_per_layer"])), " ".join(map(str, a["heads_per_layer"]))],
        [
            "MLP hidden units per layer",
            " ".join(map(str, b["mlp_hidden_per_layer"])),
            " ".join(map(str, a["mlp_hidden_per_layer"])),
        ],
        ["K/V tokens per layer", _tokens(b), _tokens(a)],
    ]
    for key, label in (("rank1", "Rank-1"), ("mAP", "mAP"), ("mINP", "mINP")):
        if key in b:
            rows.append([label, f"{100 * b[key]:.2f}%", f"{100 * a[key]:.2f}%"])
    console.print(table("compression", ["", "before", "after"], rows))
    console.print(f"executed GMAC: {100 * (1 - a['gmacs'] / b['gmacs']):.1f}% fewer")


def _tokens(s: dict) -> str:
    t = s["kv_tokens_per_layer"]
    return "all" if all(v is None for v in t) else " ".join("all" if v is None else str(v) for v in t)
