"""Grid numbering, blocks and slabs: row-major, rows are y, exactly numpy.linspace and meshgrid."""

from __future__ import annotations

import numpy as np
import pytest

from llmpi.file.grid import Grid, auto_block, blocks, runs, slabs


def test_coords_follow_meshgrid_order():
    g = Grid.from_spec((-1.0, 1.0, 5), (0.0, 2.0, 3))
    assert g.shape == (3, 5) and g.size == 15
    X, Y = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(0, 2, 3))
    c = g.coords(0, 15)
    assert np.array_equal(c[:, 0], X.ravel()) and np.array_equal(c[:, 1], Y.ravel())


def test_one_dimensional():
    g = Grid.from_spec((-0.5, 1.5, 401), None)
    assert g.shape == (401,) and g.ndim == 1
    assert np.array_equal(g.coords(10, 12)[:, 0], np.linspace(-0.5, 1.5, 401)[10:12])


def test_runs_and_blocks_cover_todo_exactly():
    todo = np.array([0, 1, 2, 5, 6, 9, 10, 11, 12, 13, 20])
    assert runs(todo) == [(0, 3), (5, 7), (9, 14), (20, 21)]
    b = blocks(todo, 2)
    assert b == [(0, 2), (2, 3), (5, 7), (9, 11), (11, 13), (13, 14), (20, 21)]
    covered = np.concatenate([np.arange(s, e) for s, e in b])
    assert np.array_equal(covered, todo)
    assert blocks(np.array([], dtype=int), 4) == []


@pytest.mark.parametrize("start,stop", [(0, 35), (3, 4), (3, 12), (7, 29), (14, 15), (0, 7), (5, 21)])
def test_slabs_write_exactly_the_flat_range(start, stop):
    shape = (5, 7)
    target = np.zeros(shape)
    values = np.arange(start, stop, dtype=float) + 1
    for index, part in slabs(shape, start, stop):
        region = target[index]
        target[index] = values[part].reshape(region.shape)
    expected = np.zeros(35)
    expected[start:stop] = values
    assert np.array_equal(target.ravel(), expected)


def test_auto_block_balances():
    assert auto_block(2601, 8) == 40
    assert auto_block(10, 8) == 1
    assert auto_block(1_002_001, 4) == 64
