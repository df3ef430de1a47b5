"""Quantization-consistency fine-tuning: make a trained SCL-net or ViT agree with its own INT8 version, within a
guard on the float model's accuracy.

Guard (`_Guard`): the stage changes the user's float model, so it may not cost more than ``max_map_drop`` of float mAP
(0.5 points by default) on query/gallery: checked every ``guard_every`` epochs and after the last; when the final
weights fail, the weights of the last passing check (or the starting weights) are what the stage writes.
The reports show drift against the model the stage started from, and what the stage changed, next to each other.

ViTs: fake quantization goes where the ViT's static ExecuTorch recipe quantizes (every linear except ``mlp.fc2``,
which that recipe keeps dynamic); the consistency term acts on the BN-neck output as for SCL-net. On the compressed
vit_tiny of ``make run`` it only cost float mAP (static PTQ already verifies at 0.996), so the pipeline does not run
it for ViTs (docs/experiments/vit-quant-finetune.md).

Why: the trained ``sclnet_small`` is hypersensitive to small perturbations (one grey level of input noise moves its
embedding to cosine ~0.92), so post-training INT8 stays at cosine ~0.91 to the float model whatever the activation
ranges (docs/experiments/sclnet-int8-sensitivity.md). Plain quantization-aware training (task loss on the
fake-quantized model; Jacob et al. 2018, "Quantization and training of neural networks for efficient
integer-arithmetic-only inference") does not change that: it optimises the quantized model's loss, not its agreement
with the float weights, and agreement is what export verification and a user's float validation measure.

What: PT2E QAT on the training graph (XNNPACKQuantizer with ``is_qat=True``: per-channel int8 weights, fake-quantized
activations with moving-average ranges, conv-BN folding simulated). Each step runs the batch twice through the same
weights: once with fake quantization and observers off (the float embedding, no gradient) and once with them on;
the loss is the ReID loss of the fake-quantized pass plus ``consistency * (1 - cos(emb_int8, emb_float))``, where
``emb`` is the exported embedding: the BN-neck with its running statistics applied to the pass's pooled features
(the consistency term in the spirit of self-distillation from the full-precision model, e.g. Mishra & Marr 2018,
"Apprentice", here with the float and quantized copies sharing weights). The consistency acts on the exported
embedding, not on the pooled features before the neck, whose large shared component inflates their cosine. The
result is an ordinary float checkpoint with the same state-dict keys, which every export route quantizes after
training with its own calibration (the fine-tuned weights, not the QAT graph, are the product). Measurements and
the variants tried and not kept: docs/results/2026-11-27-sclnet-quant-finetune.md,
docs/experiments/quant-finetune-variants.md. Speed: vectorised activation fake quantization (fast_fake_quant.py).

Compatibility: consistency alone lets the float and the quantized copies agree with each other in a new embedding
space (measured: cosine 0.44 to the user's model after 24 epochs), so a gallery enrolled with the user's model stops
matching. ``compat_weight * (1 - cos(emb_int8, emb_start))`` pulls the fake-quantized embedding towards the frozen
starting model's (`losses.compatibility_loss`); trade-off measured in docs/compatibility.md.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from . import distributed
from .compute import CPU, Compute, activate, local_rank, resolve
from .console import console, progress
from .cores import rebalance
from .data.datasets import load_dataset
from .data.torchdata import PKBatches, PKLoader, ReIDImages, TimedBatches
from .embeddings import evaluate_model, preprocess_spec_for
from .errors import CheckpointError, MobileReIDError
from .losses import compatibility_loss, deployed_embedding, reid_loss
from .models.checkpoint import load_checkpoint, save_checkpoint
from .models.registry import model_family
from .options import QuantFinetuneConfig
from .settings import check_cli
from .train import lr_at


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _qat_graph(model, example: torch.Tensor, family: str):
    """The training graph with fake quantization where export quantizes statically: everything XNNPACKQuantizer
    handles for SCL-net (its recipes are full-integer), the linear layers for ViTs except the MLP's second one, which
    the ViT's static recipe keeps dynamic (mobilereid/recipes/executorch_vit.toml: its post-GELU input is what static
    ranges miss)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .fast_fake_quant import vectorise_activation_fake_quant

    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(model, (example,)).module()
        config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
        quantizer = XNNPACKQuantizer()
        if family == "vit":
            quantizer.set_operator_type(torch.ops.aten.linear.default, config)
            quantizer.set_filter_function(lambda node: not _module_path(node).endswith("mlp.fc2"))
        else:
            quantizer.set_global(config)
        graph = prepare_qat_pt2e(graph, quantizer)
    move_exported_model_to_train(graph)
    vectorise_activation_fake_quant(graph)
    return graph


# the BN-neck whose output is the exported embedding; OSNet exports fc -> BN -> ReLU, which has no separate neck:
# its consistency acts on the training pass's feature itself (batch statistics in the fc's BN)
NECKS = {"sclnet": "head.bottleneck", "vit": "bottleneck", "resnet": "heads.bottleneck.0", "osnet": None}


def _deployed_neck(graph, eps: float, prefix: str):
    """The BN-neck as exported (eval mode, running statistics), as a function of the pre-neck features of a training
    pass: it gives the embedding that export verification and retrieval compare. The neck subtracts the features'
    running mean, so cosine on its output measures agreement of what tells identities apart; on the raw features a
    large shared component inflates cosine (measured: 0.97-0.98 during training while the exported INT8 reached only
    0.98). The graph's tensors are looked up once: training updates them in place. ``prefix`` None: no neck."""
    if prefix is None:
        return partial(deployed_embedding, None)
    buffers, params = dict(graph.named_buffers()), dict(graph.named_parameters())
    neck = SimpleNamespace(  # the neck's tensors as a BatchNorm's attributes, for the one BN-neck formula
        running_mean=buffers[f"{prefix}.running_mean"],
        running_var=buffers[f"{prefix}.running_var"],
        weight=params[f"{prefix}.weight"],
        bias=params.get(f"{prefix}.bias", buffers.get(f"{prefix}.bias")),
        eps=eps,
    )
    return partial(deployed_embedding, neck)


ZERO_SCALE_FLOOR = 1e-4


def _revive_zero_batchnorm_scales(model) -> int:
    """BatchNorm weights that are exactly 0 set to `ZERO_SCALE_FLOOR`; returns how many. PT2E QAT simulates
    conv-BN folding by scaling the conv weight with gamma / std and dividing the conv output by the same factor, so
    a zero gamma gives 0 / 0 (fast-reid's ResNets zero-initialise the last BN of every block). A trained model has
    none; the change to an untrained one is far below what the guard measures."""
    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            zero = m.weight.data == 0
            if zero.any():
                m.weight.data[zero] = ZERO_SCALE_FLOOR
                n += int(zero.sum())
    return n


def _set_quantization(graph, on: bool) -> None:
    from torchao.quantization.pt2e import disable_fake_quant, disable_observer, enable_fake_quant, enable_observer

    graph.apply(enable_fake_quant if on else disable_fake_quant)
    graph.apply(enable_observer if on else disable_observer)


def quant_finetune(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    cfg: QuantFinetuneConfig | None = None,
    metrics_before: dict | None = None,
) -> dict:
    """Fine-tune ``checkpoint`` on ``data`` (its training split) and write the float checkpoint ``out``.

    ``metrics_before``: the starting model's query/gallery metrics on ``data`` when the caller already has them (the
    pipeline's train stage scores the very weights it saves on the same split: ~10 s on one core not spent twice);
    scored here otherwise. Devices, precision and ranks as in `train` (compute.py, distributed.py): under torchrun
    each rank fine-tunes on its share of the PK batches, rank 0 scores the guard's checks and every rank follows
    the same decision; rank 0 writes ``out``."""
    cfg = cfg or QuantFinetuneConfig()
    checkpoint, out = Path(checkpoint), Path(out)
    check_cli(cfg)
    problem = cfg.guard_problem()
    if problem:
        raise MobileReIDError(f"quant-finetune: {problem}")
    compute = resolve(cfg.device, cfg.precision, cfg.workers)
    model, _ = load_checkpoint(checkpoint)
    family = model_family(model)
    if family not in NECKS:
        raise MobileReIDError(
            f"{checkpoint}: quant-finetune supports SCL-net, ViT, OSNet and ResNet checkpoints, not {family}"
        )
    if getattr(model.cfg, "jpm", False):
        raise MobileReIDError(
            f"{checkpoint}: quant-finetune does not support JPM models (the embedding has five necks)"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ds = load_dataset(data)
    labels = ds.train_labels()
    if model.cfg.num_classes != len(labels):
        raise CheckpointError(
            f"{checkpoint}: trained for {model.cfg.num_classes} identities, {data} has {len(labels)} "
            "training identities (fine-tune on the data the model was trained on)"
        )
    activate(compute)
    rank, world = distributed.start(compute)
    say = console.print if rank == 0 else (lambda *a, **k: None)
    model = model.to(compute.device)
    sampler = PKBatches(ds.train, cfg.p, cfg.k, cfg.seed, rank, world)
    steps = len(sampler)
    if steps == 0:
        raise MobileReIDError(
            f"{data}: too few identities with images for batches of P={cfg.p} x K={cfg.k}"
            f"{f' on {world} ranks' if world > 1 else ''}"
        )
    if metrics_before is None:
        metrics_before = distributed.decide_once(lambda: _float_metrics(model, ds, compute))
    images = ReIDImages(ds.train, preprocess_spec_for(model), labels, augment=True, ranks_on_host=local_rank()[1])
    loader = PKLoader(images, sampler, cfg.seed, compute.workers, pin=compute.cuda)
    say(f"quant-finetune on {compute.describe()}{f', {world} ranks' if world > 1 else ''}")
    example = torch.stack([images[i][0] for i in sampler.batches()[0]]).to(compute.device)
    revived = _revive_zero_batchnorm_scales(model)
    if revived:
        say(
            f"{revived} BatchNorm scale(s) were exactly 0 (zero-initialised residual branches): set to "
            f"{ZERO_SCALE_FLOOR:g}, since QAT's conv-BN folding divides by them"
        )
    graph = _qat_graph(model, example, family)
    neck_eps = model.get_submodule(NECKS[family]).eps if NECKS[family] else None
    neck = _deployed_neck(graph, neck_eps, NECKS[family])
    guard = _Guard(model, ds, metrics_before, cfg, compute, say)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the starting model: the compatibility target
    opt = torch.optim.Adam([p for p in graph.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = compute.scaler()
    train_graph = distributed.wrap(graph, compute)  # the float pass runs on `graph` itself: no gradient to reduce
    history = []
    for epoch in range(cfg.epochs):
        rebalance()  # a pipeline chain takes over the cores of chains that finished (cores.py)
        with progress(f"quant-finetune epoch {epoch + 1}/{cfg.epochs}", steps, show=rank == 0) as advance:
            row = _epoch(
                graph,
                train_graph,
                neck,
                teacher,
                loader.epoch(epoch),
                opt,
                scaler,
                compute,
                cfg,
                lambda i, e=epoch: lr_at(e * steps + i, cfg.epochs * steps, 0, cfg.lr),
                advance,
            )
        row = {"epoch": epoch + 1, **row}
        history.append(row)
        to_start = f"  vs the starting model {row['cosine_to_start']:.4f}" if cfg.compat_weight else ""
        say(
            f"epoch {epoch + 1}: task loss {row['task_loss']:.3f}  fake-quant vs float embedding cosine "
            f"{row['embedding_cosine']:.4f}{to_start}  {row['seconds']:.1f} s "
            f"(data wait {row['data_wait_seconds']:.1f} s)"
        )
        if guard.due(epoch + 1):
            guard.check(epoch + 1, _float_state(graph, model, checkpoint))
            if guard.gave_up:
                break
    guard.restore_or_keep(_float_state(graph, model, checkpoint))
    model.eval()
    if guard.final_metrics is not None:
        metrics_after = guard.final_metrics
    else:
        metrics_after = distributed.decide_once(lambda: _float_metrics(model, ds, compute))
    extra = {
        "quant_finetune": {**asdict(cfg), "source": str(checkpoint)},
        "history": history,
        "metrics_before": metrics_before,
        "metrics_after": metrics_after,
        "guard": guard.record,
        "compute": compute.record(),
    }
    if rank == 0:
        save_checkpoint(out, model, extra)
    distributed.stop()
    return {
        "checkpoint": str(out),
        "history": history,
        "metrics_before": metrics_before,
        "metrics_after": metrics_after,
        "guard": guard.record,
        "compute": compute.record(),
        "ranks": world,
    }


def _epoch(
    graph, train_graph, neck, teacher, batches, opt, scaler, compute, cfg: QuantFinetuneConfig, lr_of_step, advance
) -> dict:
    """One epoch of consistency fine-tuning: per batch a float pass (fake quantization and observers off, no
    gradient), the starting model's embedding (``teacher``, frozen, when ``compat_weight`` > 0) and a fake-quantized
    pass through the same weights; sums stay on the device (no sync per step)."""
    sums = torch.zeros(3, device=compute.device)
    n, t_start = 0, time.perf_counter()
    timed = TimedBatches(batches)
    for x, y, _ in timed:
        for group in opt.param_groups:
            group["lr"] = lr_of_step(n)
        x, y = compute.put(x), compute.put(y)
        with compute.autocast():
            _set_quantization(graph, False)
            with torch.no_grad():
                _, float_feats = graph(x)
                reference = teacher(x) if cfg.compat_weight else None
            _set_quantization(graph, True)
            logits, feats = train_graph(x)
            quantized = neck(feats[0].float())
            disagreement = compatibility_loss(quantized, neck(float_feats[0].float()))
            task, _ = reid_loss(logits, feats, y, cfg.label_smoothing, cfg.margin)
            loss = task + cfg.consistency * disagreement
            incompatibility = compatibility_loss(quantized, reference) if cfg.compat_weight else torch.zeros_like(task)
            loss = loss + cfg.compat_weight * incompatibility
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sums += torch.stack([task.detach().float(), disagreement.detach().float(), incompatibility.detach().float()])
        n += 1
        advance()
    mean = (sums / max(1, n)).tolist()  # plain floats: checkpoints load with weights_only=True
    return {
        "task_loss": mean[0],
        "embedding_cosine": 1 - mean[1],
        "cosine_to_start": 1 - mean[2] if cfg.compat_weight else None,
        "seconds": time.perf_counter() - t_start,
        "data_wait_seconds": timed.wait,
    }


def _float_state(graph, model, checkpoint) -> dict:
    """The fine-tuned float weights under the model's own state-dict keys."""
    state = graph.state_dict()
    missing = [k for k in model.state_dict() if k not in state]
    if missing:
        raise MobileReIDError(f"{checkpoint}: the QAT graph lost parameters {missing[:3]} (toolchain change?)")
    return {k: state[k].detach().clone() for k in model.state_dict()}


class _Guard:
    """Keeps the stage from trading the user's float accuracy for INT8 agreement: every ``guard_every`` epochs and
    after the last one the float model is scored on query/gallery, and a check passes when its mAP is at most
    ``max_map_drop`` below the model the stage started from. The stage hands on the final weights when the final
    check passes, otherwise the weights of the last check that passed (the starting weights if none did). Training
    is not cut at the first failing check: measured on ``make run``'s sclnet_small, float mAP dips while the learning
    rate is high and recovers (15.24 -> 12.54 after epoch 4 of 24, 18.19 after the last in an earlier run of the same
    recipe). The split is the one the report scores, so this is a limit, not a selection: a passing state is never
    swapped for a better-scoring one.

    Giving up: a check more than ``give_up_drop`` (2.5 points) below the start ends the stage there, with the weights
    of the last passing check. Measured (2026-12-01, checks every 8 epochs, four trained sclnet_small models and three
    learning rates; float mAP after epoch 8 against the start): the runs that passed in the end were 0.34 to 1.9
    points down after epoch 8 (1.9: lr 3e-4, then +1.5 above the start at epoch 24); the default-recipe runs that
    ended below the floor were 2.1, 3.2 and 5.2 points down and none came back within 0.5 points. 2.5 keeps a margin
    over the worst dip that recovered; stopping saves two thirds of the stage (~250 s on one core) in the runs that
    would hand on the starting weights anyway. (One earlier run checked every 4 epochs dipped 2.7 points at epoch 4
    and recovered: early checks see the learning rate's peak, so the default checks every 8.)
    """

    def __init__(
        self, model, ds, before: dict | None, cfg: QuantFinetuneConfig, compute: Compute = CPU, say=console.print
    ):
        self.model, self.ds, self.cfg, self.compute, self.say = model, ds, cfg, compute, say
        self.active = bool(cfg.guard_every) and before is not None
        self.floor = before["mAP"] - cfg.max_map_drop / 100 if self.active else None
        self.kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.final_metrics = before if self.active else None
        self.give_up_below = before["mAP"] - cfg.give_up_drop / 100 if self.active and cfg.give_up_drop else None
        self.record = {
            "max_map_drop": cfg.max_map_drop / 100,  # fractions, as metrics are
            "every": cfg.guard_every,
            "active": self.active,
            "checks": [],
            "kept_epoch": 0,
            "give_up_drop": cfg.give_up_drop / 100,
            "gave_up_epoch": None,
        }
        self.last_epoch = cfg.epochs

    @property
    def gave_up(self) -> bool:
        return self.record["gave_up_epoch"] is not None

    def due(self, epoch: int) -> bool:
        return self.active and (epoch % self.cfg.guard_every == 0 or epoch == self.last_epoch)

    def check(self, epoch: int, state: dict) -> bool:
        self.model.load_state_dict(state)
        self.model.eval()
        metrics = distributed.decide_once(lambda: _float_metrics(self.model, self.ds, self.compute))  # rank 0 scores
        ok = metrics["mAP"] >= self.floor
        self.record["checks"].append({"epoch": epoch, "mAP": metrics["mAP"], "passed": ok})
        if ok:
            self.kept, self.final_metrics, self.record["kept_epoch"] = state, metrics, epoch
        self.say(
            f"guard after epoch {epoch}: float mAP {metrics['mAP']:.2%} "
            + ("within" if ok else "NOT within")
            + f" {self.cfg.max_map_drop:.2f} points of the starting model's"
        )
        if self.give_up_below is not None and metrics["mAP"] < self.give_up_below and epoch < self.last_epoch:
            self.record["gave_up_epoch"] = epoch
            self.say(
                f"guard: float mAP is more than {self.cfg.give_up_drop:.2f} points below the start "
                f"after epoch {epoch}: "
                f"stopping early (measured: no run that fell this far recovered)"
            )
        return ok

    def restore_or_keep(self, state: dict) -> None:
        """Load the weights the stage hands on: the last checked state that passed, or the final state if unguarded."""
        self.model.load_state_dict(self.kept if self.active else state)
        if self.active and self.record["kept_epoch"] != self.last_epoch:
            why = (
                f"stopped early after epoch {self.record['gave_up_epoch']}"
                if self.gave_up
                else "the final weights lost more float mAP than allowed"
            )
            self.say(f"guard: {why}; keeping the weights of epoch {self.record['kept_epoch']}")


def _float_metrics(model, ds, compute: Compute = CPU) -> dict | None:
    """Rank-k / mAP / mINP of the float model on the query/gallery split (what fine-tuning costs in accuracy)."""
    if not ds.query or not ds.gallery:
        return None
    return {k: float(v) for k, v in evaluate_model(model, ds, compute=compute).items()}
