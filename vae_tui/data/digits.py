"""scikit-learn's bundled 8x8 digits: shipped with a dependency, so vae-tui always has data offline."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from vae_tui.data.images import ImageData, unit_images

DIGITS_TEST_SIZE = 297  # a fixed held-out sixth of the 1,797 digits
DIGITS_SPLIT_SEED = 0
CLASS_NAMES = tuple(str(d) for d in range(10))


def _digits_table() -> np.ndarray:
    """The 1797 rows of 64 pixels and a label. scikit-learn's own CSV file is read directly when it
    is where scikit-learn keeps it: importing sklearn.datasets takes about a second, which would
    delay the first frame of the monitor; its loader is the fallback."""
    spec = importlib.util.find_spec("sklearn")
    folders = spec.submodule_search_locations if spec is not None else None
    csv = Path(next(iter(folders))) / "datasets" / "data" / "digits.csv.gz" if folders else None
    if csv is not None and csv.is_file():
        with gzip.open(csv) as f:
            table = np.loadtxt(f, delimiter=",")
        if table.shape == (1797, 65):
            return table
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return np.column_stack([bunch.data, bunch.target])


def load_digits() -> ImageData:
    table = _digits_table()
    x = unit_images(table[:, :64].reshape(-1, 8, 8), 16.0)
    y = table[:, 64].astype(np.int64)
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(x))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return ImageData(
        name="digits",
        train_x=x[train],
        test_x=x[test],
        train_y=y[train],
        test_y=y[test],
        class_names=CLASS_NAMES,
        source="scikit-learn's bundled 8x8 digits",
    )
