"""Every stage's options with their defaults, ranges and help: the one place a default is written.

Each dataclass here is what its stage function takes (``train(TrainConfig)``, ``compress(CompressConfig)``, ...);
the command-line options (``settings.cli_options``) and the pipeline's TOML sections (``pipeline.load_config``) are
derived from it, and ``docs/cli.md`` / ``docs/pipeline-config.md`` are generated from it. This module imports no
torch, so ``mobilereid --help`` stays fast. Naming rules (settings.py): ``keep_*`` fractions are kept, ``*_rate``
fractions removed; mAP limits are in points.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import setting

PRECISION_NAMES = ("fp32", "bf16", "fp16")


@dataclass
class ComputeOptions:
    """Where the learning stages compute (``--device``, ``--precision``, ``--workers``; the pipeline's
    ``[pipeline]`` keys); ``compute.resolve`` checks that the device exists. Why these choices: compute.py."""

    device: str = setting(
        "auto",
        "Where to compute: auto (the first CUDA GPU if any, else cpu), cpu, cuda, cuda:N. "
        "Under torchrun each rank takes the GPU of its LOCAL_RANK.",
    )
    precision: str = setting(
        "fp32", "bf16: autocast, CPUs too; fp16: autocast + gradient scaler, GPUs only.", choices=PRECISION_NAMES
    )
    workers: int | None = setting(
        None, "Input worker processes (auto: 0 on the CPU, min(8, cores - 1) per GPU).", minimum=0, auto=True
    )


@dataclass
class TrainConfig(ComputeOptions):
    """``mobilereid train`` and a pipeline ``[models.NAME]`` table. Recipe and its sources: train.py."""

    model: str = setting(
        "sclnet", "Model preset (`mobilereid info NAME`; docs/bring-your-own-model.md).", short="-m", key="preset"
    )
    epochs: int = setting(10, "Epochs.", minimum=1)
    p: int = setting(8, "Identities per batch (P of PK sampling; the triplet loss needs 2).", minimum=2, flag="-p")
    k: int = setting(4, "Images per identity per batch (K of PK sampling).", minimum=2, flag="-k")
    lr: float = setting(3.5e-4, "Peak learning rate (Adam), reached after warm-up.", above=0)
    weight_decay: float = setting(5e-4, "Adam weight decay.", minimum=0)
    warmup_epochs: int = setting(1, "Warm-up epochs (linear), then cosine decay.", minimum=0, flag="--warmup")
    label_smoothing: float = setting(0.1, "Label smoothing of the ID loss.", minimum=0, below=1)
    margin: float = setting(0.3, "Batch-hard triplet margin.", minimum=0)
    seed: int = setting(0, "Random seed.")
    threads: int = setting(0, "Torch CPU threads (0 = torch default).", minimum=0, toml=False)
    model_options: dict = setting(
        {}, 'Model options, e.g. {img_size = [128, 64], gelu = "tanh"} (command line: --opt).', key="options", cli=False
    )
    pretrained: str | None = setting(None, "Local timm/DeiT/TransReID state dict to start a ViT from.", cli=False)
    init_checkpoint: str | None = setting(None, "Start from a mobilereid checkpoint (fine-tuning).", cli=False)
    keep_checkpoints: int = setting(
        0,
        "Also keep the last N epochs' checkpoints (weights only); last.pt and model.pt are always written.",
        minimum=0,
    )


@dataclass
class CompressConfig(ComputeOptions):
    """``mobilereid compress`` and the pipeline's ``[compress]`` section. Methods and papers: compress/pipeline.py
    and docs/compression.md."""

    keep_ratio: float | None = setting(
        None, "Patch elimination: fraction of patch tokens kept (e.g. 0.7); none = off.", above=0, maximum=1
    )
    scorer: str = setting("learned", "Patch scorer.", choices=("learned", "contrast"))
    token_order: str = setting(
        "spatial",
        "Kept patch tokens in image order (spatial: a K/V position is a region) or best score first (rank).",
        choices=("spatial", "rank"),
    )
    windows: int | None = setting(None, "Windowed attention: number of horizontal windows; none = off.", minimum=1)
    window_start: int = setting(0, "First block that runs per window.", minimum=0)
    window_weights: str = setting(
        "shared",
        "Windows: shared blocks, or a separate copy of each windowed block per window (better for unequal windows).",
        choices=("shared", "separate"),
    )
    head_rate: float = setting(0.0, "AMG: fraction of all attention heads removed.", minimum=0, below=1)
    token_rate: float = setting(0.0, "AMG: fraction of key/value token slots removed.", minimum=0, below=1)
    mlp_rate: float = setting(
        0.0, "Fraction of each MLP's hidden units removed (first-order Taylor importance).", minimum=0, below=1
    )
    mlp_epochs: int = setting(1, "Fine-tuning epochs after MLP unit pruning.", minimum=0)
    rounds: int = setting(4, "Head-pruning rounds (statistics -> prune -> fine-tune).", minimum=1)
    epochs_per_round: int = setting(1, "Fine-tuning epochs after each head-pruning round.", minimum=0)
    arch_epochs: int = setting(2, "Fine-tuning epochs after patch elimination / windows.", minimum=0)
    token_epochs: int = setting(1, "Fine-tuning epochs after K/V token pruning.", minimum=0)
    final_epochs: int = setting(2, "Final fine-tuning epochs.", minimum=0)
    lr: float = setting(1e-4, "Fine-tuning learning rate (Adam).", above=0)
    p: int = setting(8, "PK sampling: identities per batch.", minimum=2, flag="-p")
    k: int = setting(4, "PK sampling: images per identity.", minimum=2, flag="-k")
    stat_images: int = setting(
        0, "Images for the AMG statistics passes (0 = the whole training split, as AMG does).", minimum=0
    )
    distill_weight: float = setting(0.2, "Weight of the distillation loss from the uncompressed model.", minimum=0)
    compat_weight: float = setting(
        0.0,
        "Weight of (1 - cosine) between the compressed and the uncompressed model's exported embeddings (keeps "
        "galleries enrolled with your model usable); 0 = off (measured: docs/compatibility.md).",
        minimum=0,
    )
    seed: int = setting(0, "Random seed.")


@dataclass
class QuantFinetuneConfig(ComputeOptions):
    """``mobilereid quant-finetune`` and the pipeline's ``[quant_finetune]`` section. Method: quant_finetune.py."""

    epochs: int = setting(24, "Epochs.", minimum=0)
    lr: float = setting(5e-4, "Peak learning rate (Adam, cosine decay).", above=0)
    consistency: float = setting(
        100.0, "Weight of (1 - cosine) between the fake-quantized and the float exported embeddings.", minimum=0
    )
    compat_weight: float = setting(
        0.0,
        "Weight of (1 - cosine) between the fake-quantized embedding and the starting model's (keeps galleries "
        "enrolled with your model usable); 0 = off (measured: docs/compatibility.md).",
        minimum=0,
    )
    p: int = setting(16, "PK sampling: identities per batch.", minimum=2, flag="-p")
    k: int = setting(4, "PK sampling: images per identity.", minimum=2, flag="-k")
    weight_decay: float = setting(5e-4, "Adam weight decay.", minimum=0)
    label_smoothing: float = setting(0.1, "Label smoothing of the ID loss.", minimum=0, below=1)
    margin: float = setting(0.3, "Batch-hard triplet margin.", minimum=0)
    seed: int = setting(0, "Random seed.")
    threads: int = setting(0, "Torch CPU threads (0 = torch default).", minimum=0, toml=False)
    max_map_drop: float = setting(
        0.5,
        "Guard: float mAP (query/gallery) may fall at most this many points below the starting model's; otherwise "
        "the weights of the last passing check are kept.",
        minimum=0,
    )
    guard_every: int = setting(8, "Epochs between guard checks (also after the last epoch); 0 = no guard.", minimum=0)
    give_up_drop: float = setting(
        2.5,
        "Guard: a check this many mAP points below the start ends the stage early (keeping the last passing "
        "weights); 0 = never.",
        minimum=0,
    )

    def guard_problem(self) -> str | None:
        """What is wrong with the guard's values together (None when they fit): ``key = value: expected ...``."""
        if self.give_up_drop and self.give_up_drop < self.max_map_drop:
            return (
                f"give_up_drop = {self.give_up_drop!r}: "
                f"expected 0 (never) or at least max_map_drop ({self.max_map_drop})"
            )
        return None


@dataclass
class SynthOptions:
    """``mobilereid data synth`` and the pipeline's ``[data]`` section: the synthetic set's size. How it is drawn:
    data/synth.py."""

    ids: int = setting(100, "Number of identities (half train, half test; training needs 2 per batch).", minimum=4)
    test_ids: int = setting(
        0,
        "Identities in the test split (query and gallery), the rest train; 0 = half of ids. More test identities "
        "make the evaluation (thresholds, open-set rates) steadier without making training longer.",
        minimum=0,
    )
    cameras: int = setting(6, "Number of cameras (queries need a match from another camera).", minimum=2)
    seed: int = setting(0, "Random seed; the same seed gives byte-identical files.")
    height: int = setting(256, "Image height in pixels.", minimum=32)
    width: int = setting(128, "Image width in pixels.", minimum=16)

    def train_ids(self) -> int:
        """How many of the identities (the first ones) are train identities: all but ``test_ids``, or half."""
        return self.ids - self.test_ids if self.test_ids else self.ids // 2

    def split_problem(self) -> str | None:
        """What is wrong with ids and test_ids together (None when they fit): ``key = value: expected ...``."""
        if self.train_ids() < 2 or self.ids - self.train_ids() < 2:
            return (
                f"test_ids = {self.test_ids} of ids = {self.ids}: expected a train and a test split of at least 2 "
                f"identities each (test_ids 0 = half of ids)"
            )
        return None


@dataclass
class ExportOptions:
    """``mobilereid export``'s runtime options and the pipeline's ``[export]`` section."""

    threads: int = setting(2, "Runtime threads for verification.", minimum=1)
    board: str | None = setting(
        None, "tflm: a board profile of mobilereid/recipes/boards.toml (or a .toml file); none = the recipe's."
    )


@dataclass
class EvaluateOptions:
    """``mobilereid evaluate``'s device options and the pipeline's ``[evaluate]`` section."""

    device: str = setting(
        "local",
        "local, ssh://user@host[:port], adb[:serial] (not verified without a phone), or qemu-arm64[:CPU] (the "
        "emulated arm64 board of `mobilereid board setup arm64`; CPU e.g. cortex-a55, neoverse-n1).",
    )
    threads: int = setting(2, "Runtime threads on the device.", minimum=1)
    far: float = setting(
        1e-3,
        "Target false accept rate of the same-person threshold calibrated for each artifact (docs/devices.md).",
        above=0,
        below=1,
    )
    gallery_formats: str = setting(
        "",
        "Also measure gallery storage formats, a comma list of float16, int8, binary, pcaK (e.g. pca128; fitted on "
        "training images): mAP change, bytes per item, "
        "search time per query at 1k / 10k / 100k stored items (docs/devices.md).",
    )
    limit: int = setting(
        0,
        "Evaluate on a deterministic subset: the queries (up to N) of evenly spaced identities, their gallery "
        "images and as many others; 0 = all.",
        minimum=0,
    )


@dataclass
class PipelineOptions(ComputeOptions):
    """The pipeline's ``[pipeline]`` section (device, precision, workers: where every learning stage computes)."""

    parallel: bool = setting(True, "Run the model chains side by side, the cores split between them.")
    chains: list = setting([], "The [models.NAME] chains to run; [] = all.")
