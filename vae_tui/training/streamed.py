"""Training images that do not fit on the device, streamed from the decoded-picture cache.

A background thread reads each batch's rows of the memory-mapped cache (in the epoch's order, so
a streamed run is the same run as one with the images on the device) into pinned host buffers a
few batches ahead; the training thread copies a buffer to the device without waiting
(non_blocking) and turns its bytes into floats there. The loop waits neither for the disk nor
for decoding. The reader touches numpy only: every torch op stays on the training thread.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from vae_tui.config import STREAM_AHEAD
from vae_tui.training.world import Part

Item = tuple[torch.Tensor, int] | BaseException  # a filled buffer and its image count, or what went wrong


class StreamedData:
    placement = "stream"

    def __init__(
        self, train: np.ndarray, test_x: torch.Tensor, device: torch.device, batch_size: int, layout: torch.memory_format = torch.contiguous_format
    ) -> None:
        self.train, self.test_x, self.device, self.layout = train, test_x, device, layout
        pin = device.type == "cuda"
        shape = (batch_size, *train.shape[1:])
        # one being trained on, STREAM_AHEAD ready, one being filled
        self._buffers = [torch.from_numpy(np.empty(shape, dtype=train.dtype)) for _ in range(STREAM_AHEAD + 2)]
        if pin:
            self._buffers = [b.pin_memory() for b in self._buffers]
        self._ready: queue.Queue[Item] = queue.Queue()
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._in_use: tuple[torch.Tensor, torch.cuda.Event | None] | None = None
        self._copier: torch.cuda.Stream | None = None  # the stream a CUDA graph's input is filled on

    def __len__(self) -> int:
        return len(self.train)

    def start_epoch(self, perm: torch.Tensor, parts: list[Part]) -> None:
        """Start reading the rest of the epoch's batches (the images of each part of `perm`), in that order."""
        self.stop()
        host = perm.cpu().numpy()  # one copy, not one a batch
        batches = [host[part.lo : part.hi] for part in parts]
        self._stop = threading.Event()
        self._ready, self._free = queue.Queue(), queue.Queue()
        for buffer in self._buffers:
            self._free.put(buffer)
        self._reader = threading.Thread(target=self._read, args=(batches, self._stop, self._ready, self._free), name="vae-stream", daemon=True)
        self._reader.start()

    def _read(self, batches: list[np.ndarray], stop: threading.Event, ready: queue.Queue[Item], free: queue.Queue[torch.Tensor]) -> None:
        try:
            for indices in batches:
                buffer = free.get()
                if stop.is_set():
                    return
                ascending = np.sort(indices)  # rows read in file order, then put in the epoch's
                rows = self.train[ascending]
                buffer.numpy()[: len(indices)] = rows[np.searchsorted(ascending, indices)]
                ready.put((buffer, len(indices)))
        except BaseException as exc:  # the training thread raises it, where the run's errors are handled
            ready.put(exc)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The epoch's next batch (the images at `indices`), as floats on the device."""
        buffer, count = self._next(len(indices))
        x = buffer[:count].to(self.device, non_blocking=True)
        self._copied(buffer)
        return as_floats(x, self.layout)

    def fill(self, raw: torch.Tensor, count: int) -> None:
        """The epoch's next batch of `count` images, as they are stored, into the first rows of `raw` on
        the device (a CUDA graph's input). On CUDA the copy runs on a stream of its own, and the
        training stream waits for it (and it for the step before, which read `raw`)."""
        buffer, count = self._next(count)
        if self.device.type != "cuda":
            raw[:count].copy_(buffer[:count])
            self._copied(buffer)
            return
        if self._copier is None:
            self._copier = torch.cuda.Stream(self.device)
        training = torch.cuda.current_stream(self.device)
        self._copier.wait_stream(training)
        with torch.cuda.stream(self._copier):
            raw[:count].copy_(buffer[:count], non_blocking=True)
            self._copied(buffer)
        training.wait_stream(self._copier)

    def _next(self, count: int) -> tuple[torch.Tensor, int]:
        self._release()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"reading the training images from the cache failed: {item}") from item
        buffer, got = item
        if got != count:
            raise RuntimeError(f"the streamed batch has {got} images where the loop expected {count}")
        return buffer, count

    def _copied(self, buffer: torch.Tensor) -> None:
        """The host buffer is refilled only once its copy to the device has run."""
        copied = None
        if self.device.type == "cuda":
            copied = torch.cuda.Event()
            copied.record()
        self._in_use = (buffer, copied)

    def _release(self) -> None:
        """Give the last batch's buffer back to the reader, once its copy to the device is done."""
        if self._in_use is None:
            return
        buffer, copied = self._in_use
        if copied is not None:
            copied.synchronize()
        self._free.put(buffer)
        self._in_use = None

    def stop(self) -> None:
        """Stop the reader (the end of training, or an epoch restarted after a rollback)."""
        self._stop.set()
        if self._reader is not None:
            self._free.put(self._buffers[0])  # wakes a reader waiting for a free buffer; it then sees the stop
            self._reader.join()
            self._reader = None
        self._in_use = None


def as_floats(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """Images as stored (bytes, or floats) as floats in [0, 1] in the model's layout, on their device."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    return x.contiguous(memory_format=layout)
