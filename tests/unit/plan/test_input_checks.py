"""Inputs the planner refuses cleanly: bad ids and numbers, and no plan on the command line."""

from __future__ import annotations

import copy
import json

import pytest

from flsplit.cli import main
from flsplit.plan import Instance, InstanceError
from flsplit.plan.cuts.profiles import layer_profile
from flsplit.plan.generator import random_instance


def base() -> dict:
    return random_instance(3, 2, seed=0).to_dict()


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda d: d["clients"].__setitem__(1, ""), "clients[1]", "empty id"),
        (lambda d: d["helpers"].__setitem__(0, ""), "helpers[0]", "empty id"),
        (lambda d: d["stages"]["body_fwd"][1].__setitem__(0, "12"), "stages.body_fwd",
         "expected a number, got '12' at [1][0]"),
        (lambda d: d["stages"]["head_fwd_up"][0].__setitem__(1, True), "stages.head_fwd_up",
         "got True"),
        (lambda d: d.__setitem__("body_memory", [1, False, 1]), "body_memory", "got False"),
        (lambda d: d["stages"]["body_bwd"].__setitem__(0, [1e308, 1e308]), "stages.body_bwd",
         "overflows"),
        (lambda d: [d["stages"][s].__setitem__(0, [1e308, 0.0]) for s in
                    ("head_fwd_up", "body_fwd")], "stages", "overflows"),
        (lambda d: d.__setitem__("helper_memory", [1.7e308, 1.7e308]), "helper_memory",
         "overflows"),
    ],
)
def test_bad_values_are_refused_naming_the_field(mutate, field, words) -> None:
    data = copy.deepcopy(base())
    mutate(data)
    with pytest.raises(InstanceError) as info:
        Instance.from_dict(data)
    assert info.value.field == field and words in str(info.value)


def _profile(**layer) -> dict:
    return {"model": "m", "layers": [{"activation_kib": 1.0, "weights_kib": 1.0, **layer}] * 2,
            "devices": {"d": {"forward_ms": [1, 1], "backward_ms": [1, 1],
                              "update_ms": [0, 0]}}}


def test_profile_reader_refuses_booleans_and_overflowing_sums() -> None:
    with pytest.raises(ValueError, match=r"layers\[0\].weights_kib"):
        layer_profile(_profile(weights_kib=True))
    with pytest.raises(ValueError, match="activation_kib: values too large"):
        layer_profile(_profile(activation_kib=1e308))
    data = _profile()
    data["devices"]["d"]["forward_ms"] = [1e308, 1e308]
    with pytest.raises(ValueError, match=r"forward_ms: values too large"):
        layer_profile(data)


def test_plan_without_a_packing_exits_2_with_one_line(tmp_path, capsys) -> None:
    data = base()
    data["body_memory"], data["helper_memory"] = [6, 6, 6], [9, 9]  # totals fit, bodies don't
    path = tmp_path / "tight.json"
    path.write_text(json.dumps(data))
    for method in ("auto", "random-fcfs", "exact"):
        assert main(["plan", str(path), "--method", method, "--time-limit", "0.2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("flsplit: error: no plan for") and "no packing exists" in err
