"""The recurrent cells, one module each: the notebook's tanh RNN (``rnn.py``), the GRU and the LSTM.

:data:`CELLS` maps a cell's name to its layer class. It is filled from this package's modules: adding a cell is
adding a module whose :class:`RecurrentLayer` subclass names its ``cell`` (and its tests); the trainer's
``--cell``, the weight files' ``config.cell`` and the tests read this registry.
"""

from __future__ import annotations

import importlib
import pkgutil

from model.cells.layer import NUMPY_MAX_BATCH, NUMPY_MIN_STEPS, Path, PathFacts, RecurrentLayer, State, choose_path

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

CELLS: dict[str, type[RecurrentLayer]] = dict(sorted(RecurrentLayer.registry.items()))

__all__ = [
    "CELLS",
    "NUMPY_MAX_BATCH",
    "NUMPY_MIN_STEPS",
    "Path",
    "PathFacts",
    "RecurrentLayer",
    "State",
    "choose_path",
]
