"""Torch-side data: the image dataset (through the numpy preprocessing reference), augmentation, PK sampler, and
the training loader that feeds a GPU.

Augmentation follows the strong ReID baseline (Luo et al., 2019) that TransReID also uses: horizontal flip
(p=0.5), 10-pixel zero padding + random crop back to size, random erasing (p=0.5, area 2-40%, aspect 0.3-3.3,
filled with the mean, i.e. 0 after normalisation). Done in numpy on the resized image so that the un-augmented
path is exactly `mobilereid.data.preprocess`.

The loader (`PKLoader`) is a torch DataLoader over the PK batch sampler with worker processes, pinned memory and
persistent workers. Two choices make it fast and reproducible. Decoded, resized images are cached once per run in
one anonymous shared mapping (`SharedImageCache`) that forked workers write and read, so each JPEG is decoded
once per run whatever the worker count (per-worker caches would hold every image once per worker), and no
/dev/shm is needed (containers often give it 64 MB). Each item's augmentation draws from its own generator
seeded by (seed, epoch, batch, position), so the same seed gives the same batches with 0, 1 or 8 workers.
"""

from __future__ import annotations

import math
import mmap
import random
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError
from .datasets import Sample
from .preprocess import PreprocessSpec, load_rgb, normalize, resize_bilinear

CACHE_SHARE_OF_MEMORY = 0.5  # the decoded-image cache may take at most this share of the memory available at start


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class SharedImageCache:
    """Decoded, resized float32 images in one anonymous shared mapping (MAP_SHARED | MAP_ANONYMOUS): pages cost
    memory only once written, and forked DataLoader workers see each other's writes. A slot is marked filled after
    its pixels are written; two workers decoding the same image write the same bytes."""

    def __init__(self, n: int, height: int, width: int):
        self.shape = (n, height, width, 3)
        self._pixels = mmap.mmap(-1, max(1, n * height * width * 3 * 4))
        self._flags = mmap.mmap(-1, max(1, n))
        self.images = np.frombuffer(self._pixels, np.float32, n * height * width * 3).reshape(self.shape)
        self.filled = np.frombuffer(self._flags, np.uint8, n)

    @staticmethod
    def fits(n: int, height: int, width: int, ranks_on_host: int = 1) -> bool:
        free = available_memory()
        return free is None or n * height * width * 12 * ranks_on_host <= CACHE_SHARE_OF_MEMORY * free

    def get(self, i: int) -> np.ndarray | None:
        return self.images[i] if self.filled[i] else None

    def put(self, i: int, img: np.ndarray) -> None:
        self.images[i] = img
        self.filled[i] = 1


class ReIDImages(Dataset):
    """Images of ``samples`` as normalised CHW tensors with (label, camera). An index is an int, or (int, seed text)
    for augmented training items: the seed text names that item's own random generator (see `PKLoader`)."""

    def __init__(
        self,
        samples: list[Sample],
        spec: PreprocessSpec,
        labels: dict[int, int] | None = None,
        augment: bool = False,
        cache: bool = True,
        ranks_on_host: int = 1,
    ):
        self.samples, self.spec, self.labels, self.augment = samples, spec, labels, augment
        n, h, w = len(samples), spec.height, spec.width
        self.cached = cache and SharedImageCache.fits(n, h, w, ranks_on_host)
        self._cache = SharedImageCache(n, h, w) if self.cached else None

    def __len__(self) -> int:
        return len(self.samples)

    def unaugmented(self) -> ReIDImages:
        """The same images without augmentation, sharing this one's decoded cache (statistics passes)."""
        twin = object.__new__(ReIDImages)
        twin.__dict__.update(self.__dict__)
        twin.augment = False
        return twin

    def __getstate__(self):  # a spawned worker (not Linux) cannot share the mapping: it decodes for itself
        state = dict(self.__dict__)
        state["_cache"] = None
        return state

    def resized(self, i: int) -> np.ndarray:
        if self._cache is not None:
            hit = self._cache.get(i)
            if hit is not None:
                return hit
        try:
            rgb = load_rgb(self.samples[i].path)
        except ValueError as exc:  # a corrupt image found mid-epoch: one line naming it, not a traceback
            raise DatasetError(f"{exc}; fix or remove it (`mobilereid data check` decodes every image)") from None
        img = resize_bilinear(rgb, self.spec.height, self.spec.width)
        if self._cache is not None:
            self._cache.put(i, img)
        return img

    def __getitem__(self, index):
        i, seed_text = index if isinstance(index, tuple) else (index, None)
        s = self.samples[i]
        x = normalize(self.resized(i), self.spec)
        if self.augment:
            x = augment(x, random.Random(seed_text) if seed_text is not None else random)
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


class _SeededBatches:
    """The batch sampler a DataLoader iterates: this epoch's PK batches, each index paired with the seed text of its
    augmentation generator. It runs in the main process; workers only receive the indices."""

    def __init__(self, sampler: PKBatches, seed: int):
        self.sampler, self.seed = sampler, seed

    def __iter__(self):
        epoch = self.sampler.epoch
        for b, batch in enumerate(self.sampler.batches()):
            yield [(i, f"{self.seed}:{epoch}:{self.sampler.rank}:{b}:{j}") for j, i in enumerate(batch)]

    def __len__(self) -> int:
        return len(self.sampler)


class TimedBatches:
    """Iterates ``batches`` and adds the seconds spent waiting for each one to ``wait``: the data-wait share of a
    training step (what the benchmark and the epoch lines report)."""

    def __init__(self, batches):
        self.batches, self.wait = batches, 0.0

    def __iter__(self):
        it = iter(self.batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            yield batch


class PKLoader:
    """PK training batches ``(images, labels, cameras)`` for one epoch at a time, loaded by ``workers`` processes
    (0 = in this process), pinned for an asynchronous copy to a GPU when ``pin`` is set."""

    def __init__(self, images: ReIDImages, sampler: PKBatches, seed: int, workers: int = 0, pin: bool = False):
        self.sampler = sampler
        context = "fork" if workers and sys.platform.startswith("linux") else None  # the shared cache needs fork
        self.loader = DataLoader(
            images,
            batch_sampler=_SeededBatches(sampler, seed),
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            multiprocessing_context=context,
            prefetch_factor=4 if workers else None,
        )

    def epoch(self, epoch: int):
        """The batches of ``epoch`` (a fresh iterator; persistent workers are reused)."""
        self.sampler.epoch = epoch
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.sampler)
