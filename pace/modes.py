"""Switching modules to eval mode for a measurement and back to the mode each was in."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; afterwards (even on an error) each module's own earlier mode."""
    states = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, s in zip(modules, states):
            m.train(s)
