"""Training batches that keep a GPU fed: preprocess once, shuffle by index, copy ahead.

Fine-tuning reads the training set once per epoch for several epochs, so the images are
preprocessed once (:class:`~ristretto_onnx.data.Dataset` batches are exact table look-ups) and
kept as one float32 tensor: on the GPU itself when it fits, else in pinned host memory whose
batches are copied asynchronously. A dataset larger than ``in_memory_limit`` is streamed instead:
a background thread reads and preprocesses chunks while the device trains on the previous one,
shuffling within each chunk.

The order of the batches comes from a seeded CPU generator, so it is the same on every device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from ristretto_onnx.data import Dataset
from ristretto_onnx.errors import RistrettoError
from ristretto_onnx.finetune.torch_dep import require_torch

torch = require_torch()

#: Preprocessed training sets up to this size (bytes) are kept in memory.
IN_MEMORY_LIMIT = 4 * 2**30
#: Share of the free GPU memory the training tensor may take before it stays on the host.
GPU_SHARE = 0.25


class TrainBatches:
    """``epoch(batch_size, generator)`` yields shuffled ``(x, y)`` batches on ``device``."""

    def __init__(self, dataset: Dataset, device, *, in_memory_limit: int = IN_MEMORY_LIMIT) -> None:
        if dataset.labels is None:
            raise RistrettoError(f"the training data {dataset.name} has no labels")
        if len(dataset) == 0:
            raise RistrettoError(f"the training data {dataset.name} is empty")
        self.dataset = dataset
        self.device = torch.device(device)
        self.n = len(dataset)
        sample_bytes = 4 * int(np.prod(dataset.sample_shape))
        self.streaming = self.n * sample_bytes > in_memory_limit
        self.x = self.y = None
        if not self.streaming:
            xs, ys = zip(*dataset.batches(1024))
            x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs), dtype=np.float32))
            y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                if x.numel() * 4 < GPU_SHARE * free:
                    x, y = x.to(self.device), y.to(self.device)
                else:
                    x, y = x.pin_memory(), y.pin_memory()
            self.x, self.y = x, y

    def __len__(self) -> int:
        return self.n

    def batches_per_epoch(self, batch_size: int) -> int:
        return -(-self.n // batch_size)

    def epoch(self, batch_size: int, generator) -> Iterator[tuple]:
        if self.streaming:
            yield from self._stream(batch_size, generator)
            return
        perm = torch.randperm(self.n, generator=generator)
        on_device = self.x.device.type == self.device.type  # "cuda" vs "cuda:0"
        if on_device and self.device.type != "cpu":
            perm = perm.to(self.device)
        for start in range(0, self.n, batch_size):
            idx = perm[start:start + batch_size]
            x, y = self.x[idx], self.y[idx]
            if not on_device:
                x = x.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x
                y = y.to(self.device, non_blocking=True)
            yield x, y

    def _stream(self, batch_size: int, generator) -> Iterator[tuple]:
        """Chunks of the dataset read ahead by a thread; batches shuffled within each chunk."""
        chunk = batch_size * 32
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        q: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def read() -> None:
            try:
                for x, y in self.dataset.batches(chunk):
                    if stop.is_set():
                        return
                    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                    if self.device.type == "cuda":
                        xt = xt.pin_memory()
                    q.put((xt, torch.from_numpy(y.astype(np.int64))))
                q.put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(e)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                x, y = item
                order = torch.from_numpy(rng.permutation(len(x)))
                for start in range(0, len(x), batch_size):
                    idx = order[start:start + batch_size]
                    yield (x[idx].to(self.device, non_blocking=True), y[idx].to(self.device, non_blocking=True))
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.05)
