"""The pixel grid's eight symmetries (mirrors and quarter turns), numpy only.

Both backends average results over them: DIP's averaged fits (`dip.tasks`) and the trained
nets' passes (`onnx.runner`). No torch here: the ONNX path imports this module.
"""
from __future__ import annotations

import numpy as np

COUNT = 8


def grid_symmetry(array: np.ndarray, index: int, inverse: bool = False, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """``array`` under symmetry ``index`` % 8 of the grid spanned by ``axes`` (rows, columns),
    or its inverse. Bit 2: transpose, bit 1: flip rows, bit 0: flip columns; 0 = identity.
    Returns a view."""
    rows, columns = axes
    transpose, flip_rows, flip_columns = bool(index & 4), bool(index & 2), bool(index & 1)
    if transpose and not inverse:
        array = np.swapaxes(array, rows, columns)
    if flip_rows:
        array = np.flip(array, rows)
    if flip_columns:
        array = np.flip(array, columns)
    if transpose and inverse:
        array = np.swapaxes(array, rows, columns)
    return array
