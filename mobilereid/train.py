"""Training and float evaluation of ReID models (single process, or data-parallel under `torchrun`).

Recipe (strong-baseline / TransReID style): PK batches, label-smoothed CE + batch-hard triplet on every head,
Adam with linear warm-up then cosine decay (per iteration), flip / pad-crop / random-erasing augmentation.
After every epoch `last.pt` (weights + config + optimizer state) is rewritten; per-epoch copies `epoch_NNN.pt`
(weights and config only, no optimizer state) are kept for the last `keep_checkpoints` epochs (default 0: a 22 MB
ViT kept every epoch with its Adam state came to 2.6 GB over 40 epochs); `model.pt` is the final model;
`resume=True` continues from `last.pt`. Every file is written to a temporary name and renamed (a full disk is one
line naming the file); temporaries of a run killed mid-write are removed when the next run starts in the folder.

Where it runs: `compute.py` (``--device``, ``--precision``, ``--workers``); the input pipeline is `PKLoader`
(worker processes, a shared decoded-image cache, per-item augmentation seeds). Multi-process: under
`torchrun --nproc_per_node N` (env WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel
(`distributed.py`: nccl on GPUs, gloo on CPUs); every rank takes its own share of the PK batches; rank 0 writes
checkpoints and evaluates. Checkpoints hold CPU tensors (optimizer state included) and load on any device.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import distributed
from .compute import CPU, Compute, activate, local_rank, resolve
from .console import console, progress
from .cores import rebalance
from .data.datasets import load_dataset
from .data.torchdata import PKBatches, PKLoader, ReIDImages, TimedBatches
from .embeddings import evaluate_model, preprocess_spec_for
from .errors import CheckpointError, MobileReIDError
from .filesafety import atomic_write_text
from .losses import compatibility_loss, reid_loss
from .models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, sweep_stale_temporaries
from .models.registry import build_model
from .models.vit import fused_attention
from .options import TrainConfig
from .settings import check_cli


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def train_one_epoch(
    model,
    batches,
    opt,
    lr_of_step,
    uses_cam: bool = False,
    smoothing: float = 0.1,
    margin: float = 0.3,
    teacher=None,
    distill_weight: float = 0.2,
    temperature: float = 1.0,
    compat_weight: float = 0.0,
    student_embedding=None,
    on_step=None,
    compute: Compute = CPU,
    scaler=None,
) -> dict:
    """One pass over PK batches ``(images, labels, cameras)`` (a `PKLoader` epoch); returns mean loss, ID accuracy,
    and the seconds spent waiting for data vs in all. With a teacher (a function (x, cam) -> (logits, deployed
    embedding)), adds distillation ``distill_weight * KL(teacher || student)`` on the logits at ``temperature``
    (AMG's fine-tuning: CE + 0.2 KL, T=1) and, when ``compat_weight`` > 0, ``compat_weight * (1 - cos)`` between the
    student's deployed embedding (``student_embedding(pre-neck features)``) and the teacher's
    (`losses.compatibility_loss`).

    The KL is summed over batch and classes and divided by their product, as DeiT's soft distillation loss does
    (AMG's code uses it): per class, not per image, so on Market-1501's 751 identities it weighs 751x less than a
    batch mean would. Forward and loss run under ``compute``'s autocast; fp16 steps through ``scaler``."""
    import torch.nn.functional as F

    scaler = scaler if scaler is not None else compute.scaler()
    model.train()
    loss_sum = acc_sum = torch.zeros((), device=compute.device)  # summed on the device: no sync per step
    n = 0
    t_start = time.perf_counter()
    timed = TimedBatches(batches)
    with fused_attention(model):
        for x, y, cam in timed:
            for group in opt.param_groups:
                group["lr"] = lr_of_step(n)
            x, y = compute.put(x), compute.put(y)
            cam = compute.put(cam) if uses_cam else None
            with compute.autocast():
                logits, feats = model(x, cam)
                loss, parts = reid_loss(logits, feats, y, smoothing, margin)
                if teacher is not None and logits:
                    with torch.no_grad():
                        t_logits, t_embedding = teacher(x, cam)
                    if compat_weight:
                        loss = loss + compat_weight * compatibility_loss(student_embedding(feats[0]), t_embedding)
                    T = temperature
                    student = F.log_softmax(logits[0].float() / T, 1)
                    kl = (
                        F.kl_div(student, F.log_softmax(t_logits.float() / T, 1), reduction="sum", log_target=True)
                        * T
                        * T
                        / student.numel()
                    )
                    loss = loss + distill_weight * kl
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum = loss_sum + loss.detach().float()
            acc_sum = acc_sum + parts["acc"]
            n += 1
            if on_step:
                on_step(1)
    n = max(1, n)
    return {
        "loss": float(loss_sum) / n,
        "acc": float(acc_sum) / n,
        "data_wait": timed.wait,
        "seconds": time.perf_counter() - t_start,
    }


def build_for_training(cfg: TrainConfig, num_classes: int):
    if cfg.init_checkpoint:
        model, state = load_checkpoint(cfg.init_checkpoint)
        if model.cfg.num_classes != num_classes:
            from .models.checkpoint import with_identity_count

            before = model.cfg.num_classes
            model, fresh = with_identity_count(model, num_classes)
            console.print(
                f"{cfg.init_checkpoint}: trained for {before} identities, this dataset has {num_classes}: "
                f"new classifier ({', '.join(fresh)}), every other tensor from the checkpoint",
                markup=False,
            )
        return model
    options = dict(cfg.model_options)
    options["num_classes"] = num_classes
    try:
        model = build_model(cfg.model, **options)
    except (ValueError, TypeError) as exc:
        raise MobileReIDError(f"model {cfg.model}: {exc}") from None
    if cfg.pretrained:
        from .models.pretrained import load_pretrained_vit
        from .models.vit import ViTReID

        if not isinstance(model, ViTReID):
            raise MobileReIDError(f"--pretrained: only ViT presets load timm/DeiT/TransReID weights, not {cfg.model}")
        info = load_pretrained_vit(model, cfg.pretrained)
        console.print(
            f"loaded {info['loaded']} tensors from {cfg.pretrained}; "
            f"skipped {len(info['skipped'])}, new {len(info['missing'])}"
        )
    return model


def train(cfg: TrainConfig, data: str | Path, out: str | Path, resume: bool = False, evaluate: bool = True) -> dict:
    check_cli(cfg)
    compute = resolve(cfg.device, cfg.precision, cfg.workers)
    activate(compute)
    rank, world = distributed.start(compute)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    if rank == 0:
        sweep_stale_temporaries(out)  # checkpoint writes of a run that was killed mid-write (SIGKILL, power loss)
    ds = load_dataset(data)
    labels = ds.train_labels()
    model = build_for_training(cfg, len(labels)).to(compute.device)
    spec = preprocess_spec_for(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = compute.scaler()
    start_epoch = 0
    history: list[dict] = []
    if resume:
        start_epoch, history = _resume(out / "last.pt", model, opt, scaler)
        if rank == 0:
            console.print(f"resuming from {out / 'last.pt'} after epoch {start_epoch}")
    train_model = distributed.wrap(model, compute)
    sampler = PKBatches(ds.train, cfg.p, cfg.k, cfg.seed, rank, world)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise MobileReIDError(f"{data}: too few identities with images for batches of P={cfg.p} x K={cfg.k}")
    images = ReIDImages(ds.train, spec, labels, augment=True, ranks_on_host=local_rank()[1])
    loader = PKLoader(images, sampler, cfg.seed, compute.workers, pin=compute.cuda)
    if rank == 0:
        console.print(
            f"training on {compute.describe()}{f', {world} ranks' if world > 1 else ''}"
            f"{'' if images.cached else '; the decoded images do not fit in memory: decoding every epoch'}"
        )
    total_steps = cfg.epochs * steps_per_epoch
    uses_cam = getattr(model.cfg, "camera_num", 0) > 0
    for epoch in range(start_epoch, cfg.epochs):
        rebalance()  # a pipeline chain takes over the cores of chains that finished (cores.py)
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        with progress(desc, steps_per_epoch, show=rank == 0) as advance:
            sums = train_one_epoch(
                train_model,
                loader.epoch(epoch),
                opt,
                lambda i: lr_at(epoch * steps_per_epoch + i, total_steps, cfg.warmup_epochs * steps_per_epoch, cfg.lr),
                uses_cam,
                cfg.label_smoothing,
                cfg.margin,
                on_step=advance,
                compute=compute,
                scaler=scaler,
            )
        row = {
            "epoch": epoch + 1,
            "steps": steps_per_epoch,
            "loss": sums["loss"],
            "train_acc": sums["acc"],
            "seconds": sums["seconds"],
            "data_wait_seconds": sums["data_wait"],
        }
        history.append(row)
        if rank == 0:
            console.print(
                f"epoch {epoch + 1}: loss {row['loss']:.3f}  id-acc {row['train_acc']:.3f}  {row['seconds']:.1f} s"
                f" (data wait {row['data_wait_seconds']:.1f} s)"
            )
            extra = {
                "epoch": epoch + 1,
                "optimizer": opt.state_dict(),
                "train_config": asdict(cfg),
                "history": history,
                "compute": compute.record(),
                **({"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
            }
            save_checkpoint(out / "last.pt", model, extra)
            if cfg.keep_checkpoints > 0:
                save_checkpoint(
                    out / f"epoch_{epoch + 1:03d}.pt",
                    model,
                    {k: v for k, v in extra.items() if k not in ("optimizer", "grad_scaler")},
                )
                old = out / f"epoch_{epoch + 1 - cfg.keep_checkpoints:03d}.pt"
                if epoch + 1 - cfg.keep_checkpoints >= 1:
                    old.unlink(missing_ok=True)  # one this run wrote: the window moves on
    result = {"history": history, "compute": compute.record(), "ranks": world}
    if rank == 0:
        save_checkpoint(
            out / "model.pt", model, {"train_config": asdict(cfg), "history": history, "compute": compute.record()}
        )
        if evaluate:
            result["metrics"] = evaluate_model(model, ds, spec, compute)
            console.print(
                (
                    "final: Rank-1 {rank1:.2%}  Rank-5 {rank5:.2%}  Rank-10 {rank10:.2%}  "
                    "mAP {mAP:.2%}  mINP {mINP:.2%}"
                ).format(**result["metrics"])
            )
        atomic_write_text(out / "train_summary.json", json.dumps(result, indent=2))
    distributed.stop()
    return result


def _resume(last: Path, model, opt, scaler) -> tuple[int, list[dict]]:
    """Weights, optimizer (and fp16 scaler) state and history from ``last`` (CPU tensors; torch moves the optimizer
    state to the parameters' device, so a run started on a GPU resumes on the CPU and back)."""
    if not last.is_file():
        raise CheckpointError(f"{last}: nothing to resume from")
    state = read_checkpoint(last)
    extra = state.get("extra") or {}
    if "optimizer" not in extra or "epoch" not in extra:
        raise CheckpointError(f"{last}: holds no optimizer state and epoch: not a training checkpoint to resume from")
    try:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(extra["optimizer"])
        if scaler.is_enabled() and "grad_scaler" in extra:
            scaler.load_state_dict(extra["grad_scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{last}: does not fit this model and optimizer ({str(exc).splitlines()[0][:160]})"
        ) from None
    return int(extra["epoch"]), list(extra.get("history") or [])
