"""Torch-side data: the image dataset (through the numpy preprocessing reference), augmentation, PK sampler.

Augmentation follows the strong ReID baseline (Luo et al., 2019) that TransReID also uses: horizontal flip
(p=0.5), 10-pixel zero padding + random crop back to size, random erasing (p=0.5, area 2-40%, aspect 0.3-3.3,
filled with the mean, i.e. 0 after normalisation). Done in numpy on the resized image so that the un-augmented
path is exactly `mobilereid.data.preprocess`.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DatasetError
from .datasets import Sample
from .preprocess import PreprocessSpec, load_rgb, normalize, resize_bilinear


class ReIDImages(Dataset):
    def __init__(self, samples: list[Sample], spec: PreprocessSpec, labels: dict[int, int] | None = None, augment: bool = False, cache: bool = True):
        self.samples, self.spec, self.labels, self.augment = samples, spec, labels, augment
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def resized(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        try:
            rgb = load_rgb(self.samples[i].path)
        except ValueError as exc:  # a corrupt image found mid-epoch: one line naming it, not a traceback
            raise DatasetError(f"{exc}; fix or remove it (`mobilereid data check` decodes every image)") from None
        img = resize_bilinear(rgb, self.spec.height, self.spec.width)
        if self._cache is not None:
            self._cache[i] = img
        return img

    def __getitem__(self, i: int):
        s = self.samples[i]
        x = normalize(self.resized(i), self.spec)
        if self.augment:
            x = augment(x, random)
        label = self.labels[s.pid] if self.labels is not None else s.pid
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), label, s.camid


def augment(x: np.ndarray, rng: random.Random, pad: int = 10, erase_p: float = 0.5) -> np.ndarray:
    h, w, _ = x.shape
    if rng.random() < 0.5:
        x = x[:, ::-1]
    padded = np.zeros((h + 2 * pad, w + 2 * pad, 3), np.float32)
    padded[pad : pad + h, pad : pad + w] = x
    top, left = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    x = padded[top : top + h, left : left + w].copy()
    if rng.random() < erase_p:
        for _ in range(100):
            area = h * w * rng.uniform(0.02, 0.4)
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < eh < h and 0 < ew < w:
                y0, x0 = rng.randint(0, h - eh), rng.randint(0, w - ew)
                x[y0 : y0 + eh, x0 : x0 + ew] = 0.0
                break
    return x


class PKBatches:
    """Batches of P identities x K images (torchreid's RandomIdentitySampler), optionally split across ranks.

    Every rank builds the same batch list from (seed, epoch) and takes batches rank, rank+world, ...; the list is
    cut to a multiple of the world size so all ranks step together.
    """

    def __init__(self, samples: list[Sample], p: int, k: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.by_pid: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            self.by_pid[s.pid].append(i)
        self.p, self.k, self.seed, self.rank, self.world = min(p, len(self.by_pid)), k, seed, rank, world
        self.epoch = 0

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1000003 + self.epoch)
        chunks: dict[int, list[list[int]]] = {}
        for pid in sorted(self.by_pid):
            idx = list(self.by_pid[pid])
            if len(idx) < self.k:
                idx = idx + [rng.choice(idx) for _ in range(self.k - len(idx))]
            rng.shuffle(idx)
            chunks[pid] = [idx[i : i + self.k] for i in range(0, len(idx) - self.k + 1, self.k)]
        out = []
        available = [pid for pid in chunks if chunks[pid]]
        while len(available) >= self.p:
            chosen = rng.sample(available, self.p)
            batch = []
            for pid in chosen:
                batch.extend(chunks[pid].pop())
            out.append(batch)
            available = [pid for pid in available if chunks[pid]]
        out = out[: len(out) - len(out) % self.world] if self.world > 1 else out
        return out[self.rank :: self.world]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
