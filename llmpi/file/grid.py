"""The grid of points and its partition into blocks: pure numpy, shared by coordinator, store and plots.

Points are numbered row-major over the surface arrays: in 2D the array is (ny, nx) and flat index k is the
point (x[k % nx], y[k // nx]) -- rows are y, columns are x, as ``numpy.meshgrid(x, y)`` and matplotlib expect.
A block is a contiguous run [start, stop) of flat indices: cheap to send, and written with at most three slabs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    x: np.ndarray
    y: np.ndarray | None = None

    @classmethod
    def from_spec(cls, x: tuple[float, float, int], y: tuple[float, float, int] | None) -> Grid:
        """Axes inclusive of both ends, exactly ``numpy.linspace(min, max, num)``."""
        xs = np.linspace(x[0], x[1], int(x[2]))
        ys = None if y is None else np.linspace(y[0], y[1], int(y[2]))
        return cls(xs, ys)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coords(self, start: int, stop: int) -> np.ndarray:
        """Coordinates (k, ndim) of flat indices start..stop-1: columns (a) or (a, b)."""
        k = np.arange(start, stop)
        if self.y is None:
            return self.x[k][:, None]
        nx = len(self.x)
        return np.stack([self.x[k % nx], self.y[k // nx]], axis=1)


def runs(todo: np.ndarray) -> list[tuple[int, int]]:
    """Maximal contiguous runs [start, stop) of a sorted array of flat indices."""
    if len(todo) == 0:
        return []
    breaks = np.flatnonzero(np.diff(todo) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(todo)]])
    return [(int(todo[a]), int(todo[b - 1]) + 1) for a, b in zip(starts, stops)]


def blocks(todo: np.ndarray, block: int) -> list[tuple[int, int]]:
    """The points still to do, cut into contiguous blocks of at most ``block`` points, in grid order."""
    out = []
    for start, stop in runs(np.sort(todo)):
        out.extend((s, min(s + block, stop)) for s in range(start, stop, block))
    return out


def auto_block(todo: int, workers: int) -> int:
    """Points per block: at least 8 blocks per worker for balance at the end, at most 64 points per block.

    Small blocks cost one small message each (microseconds against a forward pass over a dataset); the cap keeps
    the work lost to a kill or a pre-emption to a few points per rank.
    """
    return max(1, min(64, todo // max(1, 8 * workers)))


def slabs(shape: tuple[int, ...], start: int, stop: int) -> list[tuple[tuple[slice | int, ...], slice]]:
    """(array index, slice of the block's values) pairs that cover flat range [start, stop) of a 1D/2D array."""
    if len(shape) == 1:
        return [((slice(start, stop),), slice(0, stop - start))]
    nx = shape[1]
    out = []
    k = start
    while k < stop:
        j, i = divmod(k, nx)
        if i == 0 and stop - k >= nx:  # whole rows at once
            rows = (stop - k) // nx
            out.append(((slice(j, j + rows), slice(None)), slice(k - start, k - start + rows * nx)))
            k += rows * nx
        else:
            end = min(stop, (j + 1) * nx)
            out.append(((j, slice(i, i + end - k)), slice(k - start, end - start)))
            k = end
    return out
