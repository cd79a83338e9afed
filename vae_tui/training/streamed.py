"""Training images that do not fit on the device, streamed from the decoded-picture cache.

A background thread reads each batch's rows of the memory-mapped cache (in the epoch's order, so
a streamed run is the same run as one with the images on the device) into pinned host buffers a
few batches ahead; the training thread copies a buffer to the device without waiting
(non_blocking) and turns its bytes into floats there. The loop waits neither for the disk nor
for decoding. The reader touches numpy only: every torch op stays on the training thread.

A host buffer goes back to the reader once its copy has run, which the loop looks at without
waiting (an event's query); it waits for one only when IN_FLIGHT copies are still queued.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from vae_tui.config import STREAM_AHEAD
from vae_tui.training.world import Part

Item = tuple[torch.Tensor, int] | BaseException  # a filled buffer and its image count, or what went wrong
IN_FLIGHT = 2  # host buffers whose copies may still be queued on the device before the loop waits for one


class CudaStreams:
    """The CUDA calls streaming makes, in one place (a test puts a simulated timeline in their stead)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def new(self) -> Any:
        return torch.cuda.Stream(self.device)

    def using(self, stream: Any) -> AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def event(self) -> Any:
        """An event recorded on the current stream: done once all queued before it has run."""
        event = torch.cuda.Event()
        event.record()
        return event

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src, non_blocking=True)


class StreamedData:
    placement = "stream"

    def __init__(
        self,
        train: np.ndarray,
        test_x: torch.Tensor,
        device: torch.device,
        batch_size: int,
        layout: torch.memory_format = torch.contiguous_format,
        streams: Any = None,
    ) -> None:
        """`streams`: CUDA's (CudaStreams) on a CUDA device, where copies run beside the compute; none elsewhere."""
        self.train, self.test_x, self.device, self.layout = train, test_x, device, layout
        self.streams = streams if streams is not None else CudaStreams(device) if device.type == "cuda" else None
        shape = (batch_size, *train.shape[1:])
        # IN_FLIGHT being copied, STREAM_AHEAD ready, one being filled
        self._buffers = [torch.from_numpy(np.empty(shape, dtype=train.dtype)) for _ in range(STREAM_AHEAD + IN_FLIGHT + 1)]
        if device.type == "cuda":
            self._buffers = [b.pin_memory() for b in self._buffers]
        self._ready: queue.Queue[Item] = queue.Queue()
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._in_use: deque[tuple[torch.Tensor, Any]] = deque()  # host buffers whose copies may be queued, and their events
        self._copier: Any = None  # the stream a CUDA graph's input is filled on

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
        self._in_use.append((buffer, self.mark()))
        return as_floats(x, self.layout)

    def fill(self, raw: torch.Tensor, count: int, reusable: Any = None) -> None:
        """The epoch's next batch of `count` images, as they are stored, into the first rows of `raw` on
        the device (a CUDA graph's input). With streams, the copy runs on a stream of its own as soon as
        `reusable` (the event after the last step that read `raw`) has, beside the step in flight; the
        training stream waits for the copy."""
        buffer, count = self._next(count)
        streams = self.streams
        if streams is None:
            raw[:count].copy_(buffer[:count])
            self._in_use.append((buffer, None))
            return
        if self._copier is None:
            self._copier = streams.new()
        training = streams.current()
        if reusable is not None:
            self._copier.wait_event(reusable)
        else:  # no step has read `raw` yet, or one whose end was not marked: after all that is queued
            self._copier.wait_stream(training)
        with streams.using(self._copier):
            streams.copy(raw[:count], buffer[:count])
            copied = streams.event()
        training.wait_event(copied)
        self._in_use.append((buffer, copied))

    def mark(self) -> Any:
        """An event after all the training stream has queued (None without streams: all has run)."""
        return self.streams.event() if self.streams is not None else None

    def _next(self, count: int) -> tuple[torch.Tensor, int]:
        self._release()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"reading the training images from the cache failed: {item}") from item
        buffer, got = item
        if got != count:
            raise RuntimeError(f"the streamed batch has {got} images where the loop expected {count}")
        return buffer, count

    def _release(self) -> None:
        """Give host buffers back to the reader: each one whose copy has run, and, waiting for its copy,
        the oldest while IN_FLIGHT are still queued (the batch about to be taken makes one more)."""
        while self._in_use:
            buffer, copied = self._in_use[0]
            if copied is not None and len(self._in_use) < IN_FLIGHT and not copied.query():
                return
            if copied is not None:
                copied.synchronize()
            self._in_use.popleft()
            self._free.put(buffer)

    def stop(self) -> None:
        """Stop the reader (the end of training, or an epoch restarted after a rollback)."""
        self._stop.set()
        if self._reader is not None:
            self._free.put(self._buffers[0])  # wakes a reader waiting for a free buffer; it then sees the stop
            self._reader.join()
            self._reader = None
        for _, copied in self._in_use:  # the reader may refill them next: their copies must have run
            if copied is not None:
                copied.synchronize()
        self._in_use.clear()


def as_floats(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """Images as stored (bytes, or floats) as floats in [0, 1] in the model's layout, on their device."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    return x.contiguous(memory_format=layout)
