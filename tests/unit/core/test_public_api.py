"""What a Flower user touches is exported by flsplit and documented."""

import flsplit
import strategies


def test_every_public_name_resolves_and_has_a_docstring():
    for name in flsplit.__all__:
        value = getattr(flsplit, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"flsplit.{name} has no docstring"
    assert flsplit.SplitStrategy is strategies.SplitStrategy
    assert flsplit.PlannedSplitStrategy is strategies.PlannedSplitStrategy
    assert issubclass(strategies.PlannedSplitStrategy, strategies.SplitStrategy)
    assert flsplit.DEFAULT_RUN_CONFIG["batch-size"] == flsplit.RunConfig.parse().batch_size
