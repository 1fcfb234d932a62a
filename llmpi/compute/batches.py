"""Where the selected data live during a sweep, and how each batch reaches the device (``data.placement``).

    source = make_source(inputs, targets, device, placement="auto")
    for start, stop, x, y in source(n, batch_size):      # x, y on the device, rows start..stop-1
        ...

* ``device`` -- the whole selection resident on the device; a batch is a view of it. Fastest: nothing moves per
  point. A selection that does not fit is refused before anything is copied, with the bytes needed and free.
* ``host`` -- the selection stays in host memory: page-locked (pinned) when it takes at most ``PIN_SHARE`` of
  the memory the host has available, else where it lies -- e.g. the memory-mapped token file a data factory
  returns, read from disk as it is needed -- and staged through two pinned buffers. Batches are copied to two
  device buffers on a copy stream: the copy of batch k+1 runs while batch k is computed (CUDA events order
  the copy after the compute that last read its buffer, and the compute after its copy). Device memory: two
  batches.
* ``auto`` -- ``device`` when the selection takes at most ``DEVICE_SHARE`` of the device memory free once the
  network and the weights are there (the rest is for activations), else ``host``.

The values are the same bits in every placement: a batch holds the same numbers in the same layout, and the
network runs the same kernels on it. On a CPU the host *is* the device: both placements hold the selection where
it is and hand out views of it, nothing is copied and nothing overlaps (``overlapped`` is False); a memory-mapped
selection stays mapped. Placement decides nothing about values, so ``auto`` may choose differently on each rank.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..job.errors import JobError

PLACEMENTS = ("auto", "device", "host")
DEVICE_SHARE = 0.5  # auto: the data may take half the free device memory; activations and the tally get the rest
PIN_SHARE = 0.5  # host: pin the selection when it takes at most half the available host memory
GIB = float(1 << 30)

Batch = tuple[int, int, torch.Tensor, torch.Tensor]


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def available_host_memory() -> int:
    """MemAvailable of /proc/meminfo (what the kernel can hand out without swapping), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_device_memory(device: torch.device) -> int:
    """Bytes the device can still allocate: CUDA's free memory plus what torch's allocator holds unused."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return available_host_memory()


class BatchSource:
    """Batches of a selection on one device. ``placement``: where the selection is held ("device" or "host");
    ``overlapped``: whether copies to the device run while the previous batch computes."""

    placement: str
    overlapped: bool = False

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs, self.targets, self.device = inputs, targets, device

    def __call__(self, n: int, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class ResidentBatches(BatchSource):
    """The selection where it is (the device's memory), batches are views of it."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, placement: str) -> None:
        super().__init__(inputs, targets, device)
        self.placement = placement

    def __call__(self, n: int, batch_size: int) -> Iterator[Batch]:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            yield start, stop, self.inputs[start:stop], self.targets[start:stop]

    def describe(self) -> str:
        gib = nbytes(self.inputs, self.targets) / GIB
        if self.device.type == "cpu":
            return (
                f"data placement {self.placement}: on a CPU the host is the device, the selection ({gib:.2f} GiB) "
                f"is used where it lies and batches are views of it"
            )
        return f"data placement device: the selection ({gib:.2f} GiB) resident on {self.device}"


class StreamedBatches(BatchSource):
    """The selection in host memory; batches copied to the device on a copy stream, one ahead of the compute."""

    placement = "host"
    overlapped = True

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device) -> None:
        pinned = nbytes(inputs, targets) <= PIN_SHARE * available_host_memory()
        if pinned:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        super().__init__(inputs, targets, device)
        self.pinned = pinned
        self.copy_stream = torch.cuda.Stream(device)
        self.rows = 0  # batch size the buffers are made for
        self.ready = [torch.cuda.Event(), torch.cuda.Event()]  # copy into slot s finished
        self.free = [torch.cuda.Event(), torch.cuda.Event()]  # compute that read slot s finished

    def _buffers(self, rows: int) -> None:
        if rows == self.rows:
            return
        torch.cuda.synchronize(self.device)  # nothing may still read or write the old buffers
        self.rows = rows
        head_x, head_y = self.inputs[:rows], self.targets[:rows]
        self.slots = [
            (torch.empty_like(head_x, device=self.device), torch.empty_like(head_y, device=self.device))
            for _ in range(2)
        ]
        if not self.pinned:  # pageable or memory-mapped: staged through pinned buffers, so the copies are DMA
            self.staging = [
                (torch.empty_like(head_x).pin_memory(), torch.empty_like(head_y).pin_memory()) for _ in range(2)
            ]

    def _issue(self, slot: int, start: int, stop: int) -> None:
        """Start copying rows start..stop-1 into ``slot`` on the copy stream, once the slot's last reader is done."""
        rows = stop - start
        x, y = self.slots[slot]
        src_x, src_y = self.inputs[start:stop], self.targets[start:stop]
        if not self.pinned:
            self.ready[slot].synchronize()  # the previous copy out of this staging buffer has finished
            stage_x, stage_y = self.staging[slot]
            stage_x[:rows].copy_(src_x)
            stage_y[:rows].copy_(src_y)
            src_x, src_y = stage_x[:rows], stage_y[:rows]
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.free[slot])
            x[:rows].copy_(src_x, non_blocking=True)
            y[:rows].copy_(src_y, non_blocking=True)
            self.ready[slot].record(self.copy_stream)

    def __call__(self, n: int, batch_size: int) -> Iterator[Batch]:
        ranges = [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]
        if not ranges:
            return
        self._buffers(min(batch_size, len(self.inputs)))
        compute = torch.cuda.current_stream(self.device)
        self._issue(0, *ranges[0])
        for k, (start, stop) in enumerate(ranges):
            if k + 1 < len(ranges):
                self._issue((k + 1) % 2, *ranges[k + 1])  # batch k+1 copies while batch k computes
            slot = k % 2
            compute.wait_event(self.ready[slot])
            x, y = self.slots[slot]
            yield start, stop, x[: stop - start], y[: stop - start]
            self.free[slot].record(compute)  # the caller has queued its work on batch k

    def describe(self) -> str:
        gib = nbytes(self.inputs, self.targets) / GIB
        held = "pinned host memory" if self.pinned else "host memory as it lies (e.g. memory-mapped), staged"
        return (
            f"data placement host: the selection ({gib:.2f} GiB) in {held}; batches copied to {self.device} one "
            f"ahead of the compute"
        )


def resolve_placement(placement: str, need: int, free: int) -> str:
    """``auto``: ``device`` when the selection (``need`` bytes) takes at most ``DEVICE_SHARE`` of ``free``."""
    if placement == "auto":
        return "device" if need <= DEVICE_SHARE * free else "host"
    return placement


def make_source(
    inputs: torch.Tensor, targets: torch.Tensor, device: torch.device | str, placement: str = "device"
) -> BatchSource:
    """The batch source ``placement`` names for ``device`` (see the module docstring); ``auto`` resolved here."""
    device = torch.device(device)
    if placement not in PLACEMENTS:
        raise ValueError(f"data.placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    if device.type != "cuda":  # one memory: hold the selection where it is, whatever the placement
        resolved = "host" if placement == "host" else "device"
        return ResidentBatches(inputs.to(device), targets.to(device), device, resolved)
    if inputs.device == device and targets.device == device:  # already resident (a caller's choice)
        return ResidentBatches(inputs, targets, device, "device")
    need, free = nbytes(inputs, targets), free_device_memory(device)
    placement = resolve_placement(placement, need, free)
    if placement == "device":
        if need > free:
            raise JobError(
                f"data.placement: device needs {need / GIB:.2f} GiB of {device} for the selected {len(targets)} "
                f"samples, but {free / GIB:.2f} GiB is free after the network; set data.placement: host (or auto) "
                f"to stream batches from host memory, or select fewer samples (data.subset)"
            )
        return ResidentBatches(inputs.to(device), targets.to(device), device, "device")
    return StreamedBatches(inputs.cpu(), targets.cpu(), device)
