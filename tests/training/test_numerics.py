"""Subnormal floats are flushed for the span of a run; scopes nest, and only the outermost turns the switch off."""
import pytest
import torch

from sam_nnunet.training.numerics import flush_denormal

CPU = torch.device("cpu")


def flushed() -> bool:
    return torch.tensor([1e-323], dtype=torch.float64).item() == 0.0


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero (not x86 with SSE3)")
def test_scopes_nest_and_the_process_gets_its_default_back():
    assert not flushed()
    with flush_denormal(CPU) as outer:
        assert outer and flushed()
        with flush_denormal(CPU) as inner:  # a trainer's run inside a benchmark row
            assert inner and flushed()
        assert flushed()  # the row's prediction still runs flushed
    assert not flushed()
    with flush_denormal(torch.device("meta")) as on:  # not a CPU: nothing changes
        assert not on and not flushed()

