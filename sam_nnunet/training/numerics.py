"""CPU numerics for a training run: subnormal floats flushed to zero, for the run only.

Attention softmax produces subnormal floats as it sharpens, and CPU arithmetic on them is many times slower
(epochs grew from 10 s to 90 s in a Self-Prompt-SAM run without this). ``torch.set_flush_denormal`` is a process-wide
switch, so it is turned on for the span of a run (:func:`flush_denormal`) and back off after it: code that imports
the project and never trains keeps torch's default. Scopes nest (a benchmark row around a trainer's run): only the
outermost one turns the switch off.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch

_depth = 0  # open scopes that turned the switch on


@contextmanager
def flush_denormal(device: torch.device, log: Optional[Callable[[str], None]] = None) -> Iterator[bool]:
    """Subnormal floats flushed to zero inside the block when ``device`` is a CPU that supports it (x86 with SSE3);
    yields whether it is on. torch has no getter for the switch, so on exit it goes back to torch's default (off)."""
    global _depth
    on = device.type == "cpu" and torch.set_flush_denormal(True)
    if on and log is not None:
        log("CPU: subnormal floats flushed to zero for this run (torch.set_flush_denormal).")
    _depth += on
    try:
        yield on
    finally:
        if on:
            _depth -= 1
            if _depth == 0:
                torch.set_flush_denormal(False)
