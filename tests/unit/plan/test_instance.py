"""Instance format: JSON round trip, validation errors naming the field, slotted form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from flsplit.plan.instance import (
    STAGE_NAMES,
    Instance,
    InstanceError,
    load_instance,
    save_instance,
    to_slotted,
)

from .conftest import uniform


def base_dict() -> dict:
    return uniform(2, 2, head_fwd_up=1, body_fwd=2, tail_fwd_bwd=3, body_bwd=4,
                   down_head_bwd=5).to_dict()


def test_json_round_trip(tmp_path: Path) -> None:
    instance = uniform(3, 2, head_fwd_up=1.5, body_fwd=2, tail_fwd_bwd=3, body_bwd=4,
                       down_head_bwd=5)
    instance.meta = {"note": "x"}
    path = tmp_path / "i.json"
    save_instance(instance, path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["format"] == "flsplit-instance"
    loaded = load_instance(path)
    assert loaded.client_ids == instance.client_ids
    assert loaded.helper_ids == instance.helper_ids
    for stage in STAGE_NAMES:
        np.testing.assert_array_equal(loaded.stage(stage), instance.stage(stage))
    assert loaded.meta == {"note": "x"}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["stages"]["body_fwd"][1].__setitem__(0, -1.0), "stages.body_fwd[1][0]"),
        (lambda d: d["stages"]["tail_fwd_bwd"][0].__setitem__(1, math.nan),
         "stages.tail_fwd_bwd[0][1]"),
        (lambda d: d["stages"]["body_bwd"].pop(), "stages.body_bwd"),
        (lambda d: d["stages"].pop("down_head_bwd"), "stages.down_head_bwd"),
        (lambda d: d["stages"]["head_fwd_up"][0].__setitem__(0, "fast"),
         "stages.head_fwd_up"),
        (lambda d: d["body_memory"].__setitem__(1, 99.0), "body_memory[1]"),
        (lambda d: d["body_memory"].append(1.0), "body_memory"),
        (lambda d: d["helper_memory"].__setitem__(0, -2.0), "helper_memory[0]"),
        (lambda d: d.__setitem__("version", 7), "version"),
        (lambda d: d.__setitem__("clients", ["a", "a"]), "clients"),
        (lambda d: d.pop("helpers"), "helpers"),
    ],
)
def test_validation_names_field(mutate, field: str) -> None:
    data = base_dict()
    mutate(data)
    with pytest.raises(InstanceError) as info:
        Instance.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_total_memory_too_small() -> None:
    data = base_dict()
    data["body_memory"] = [2.0, 2.0]
    data["helper_memory"] = [2.0, 1.0]
    with pytest.raises(InstanceError) as info:
        Instance.from_dict(data)
    assert info.value.field == "helper_memory"


def test_slotted_form() -> None:
    instance = uniform(2, 2, head_fwd_up=50.0, body_fwd=0.01, tail_fwd_bwd=200.0,
                       body_bwd=30.0, down_head_bwd=7.0)
    slotted = to_slotted(instance)
    assert slotted.tail_fwd_bwd.max() == 100
    assert slotted.head_fwd_up[0, 0] == 25
    assert slotted.down_head_bwd[0, 0] == math.ceil(100 * 7 / 200)
    assert slotted.body_fwd.min() == 1  # helper times at least one slot
    assert slotted.body_bwd[0, 0] == 15
    for stage in STAGE_NAMES:
        assert np.all(slotted.stage(stage) == np.floor(slotted.stage(stage)))
