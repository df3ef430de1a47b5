"""Torch threads that follow the work: when pipeline chains run side by side, a chain that is still running takes
over the cores of the chains that have finished, from its next epoch or stage on.

Why: the default run's two chains are not equally long (measured: SCL-net train + quant-finetune + export 865 s,
ViT train + compress + export 665 s), so with a fixed split one core idled for the last 200 s. A process-wide share
(`follow`) is set once by the pipeline's chain process; `rebalance` is called where changing torch's intra-op
thread count is safe and cheap (between epochs and stages). Outside a pipeline chain nothing follows and
`rebalance` does nothing: a command keeps the threads it was given.
"""

from __future__ import annotations

from collections.abc import Callable

_share: Callable[[], int] | None = None


def follow(share_of_cores: Callable[[], int]) -> None:
    """From now on ``rebalance`` sets torch's thread count to ``share_of_cores()`` (at least 1)."""
    global _share
    _share = share_of_cores
    rebalance()


def share() -> int | None:
    """This process's current share of the cores, or None outside a pipeline chain."""
    if _share is None:
        return None
    try:
        return max(1, int(_share()))
    except Exception:  # the share cannot be read (a caller's own callable failed): keep the current threads
        return None


def rebalance() -> None:
    if _share is None:
        return
    import torch

    wanted = share()
    if wanted is None:
        return
    if wanted != torch.get_num_threads():
        torch.set_num_threads(wanted)
