"""The run config: one typed parse with the defaults, and errors that name the key."""

import pytest

from flsplit.config import DEFAULT_RUN_CONFIG, RunConfig


def test_defaults_fill_what_is_not_given_and_unknown_keys_pass_through():
    config = RunConfig.parse({"num-helpers": 2}, {"dataset": "digits"})
    assert config.num_helpers == 2
    assert config.batch_size == DEFAULT_RUN_CONFIG["batch-size"]
    assert config.values["dataset"] == "digits"
    assert config.chain.length == 1 and not config.sync.sync and not config.planned


def test_later_configs_win_and_strings_are_converted():
    config = RunConfig.parse({"batch-size": 8}, {"batch-size": "16", "gantt": "true"})
    assert config.batch_size == 16 and config.gantt is True


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch-size", "many", "batch-size='many' is not an integer"),
        ("batch-size", 0, "batch-size=0 must be at least 1"),
        ("round-timeout", -1, "round-timeout=-1 must be positive"),
        ("mode", "central", "mode='central' is not 'split' or 'fedavg'"),
        ("helper-memory", "pooled", "helper-memory='pooled' is not one of per-client, shared"),
        ("gantt", "maybe", "gantt='maybe' is not true or false"),
        ("chain-length", 0, "chain-length=0 must be an integer in"),
        ("sampler", "random", "sampler='random' is not one of"),
    ],
)
def test_a_bad_value_is_refused_with_the_key_and_the_fix(key, value, message):
    with pytest.raises(ValueError, match="run config") as error:
        RunConfig.parse({key: value})
    assert message in str(error.value)


def test_combinations_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="needs mode='split'"):
        RunConfig.parse({"sampler": "uniform", "mode": "fedavg"})
    with pytest.raises(ValueError, match="helper-memory='shared'"):
        RunConfig.parse({"micro-batches": 2, "helper-memory": "shared"})


def test_replace_rechecks():
    config = RunConfig.parse({})
    assert config.replace(cuts="conv2,fc1").cuts == "conv2,fc1"
    with pytest.raises(ValueError, match="lr"):
        config.replace(lr="fast")
