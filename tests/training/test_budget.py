"""The budget's schedule: the epoch that the spent fraction of the budget is."""
from sam_nnunet.training.budget import budget_epoch


def test_budget_epoch_follows_the_spent_fraction():
    assert [budget_epoch(f) for f in (0.0, 0.2, 0.5, 0.9999, 1.0, 2.0)] == [0, 200, 500, 999, 999, 999]
    assert budget_epoch(0.0, start_fraction=0.999) == 999 and budget_epoch(0.5, 10, start_fraction=0.5) == 7
