"""``flsplit plan`` / ``gen-instance``, the planner benchmark and the profile generator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.planner import main as bench_planner_main
from flsplit.cli import main
from flsplit.plan.generator import CUTS, generate_instance
from flsplit.plan.instance import STAGE_NAMES, load_instance
from tests.paths import SHARED_PROFILES


def test_plan_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    instance_path = tmp_path / "i.json"
    assert main(["gen-instance", str(instance_path), "--model", "random", "-K", "6",
                 "-H", "2", "--seed", "3"]) == 0
    out, gantt_path = tmp_path / "p.json", tmp_path / "p.png"
    code = main(["plan", str(instance_path), "--method", "greedy", "--time-limit", "0.2",
                 "--seed", "1", "--out", str(out), "--gantt", str(gantt_path),
                 "--bound-time", "0.5"])
    assert code == 0
    text = capsys.readouterr().out
    for word in ("makespan", "lower bound", "gap", "solve time", "clients/helper"):
        assert word in text
    plan = json.loads(out.read_text())
    assert plan["version"] == 1 and plan["method"] == "greedy"
    assert set(plan["assignment"]) == {f"c{k}" for k in range(6)}
    assert gantt_path.stat().st_size > 1000


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["stages"]["body_bwd"][0].__setitem__(0, -3), "stages.body_bwd[0][0]"),
        (lambda d: d["stages"]["head_fwd_up"].append([1, 1]), "stages.head_fwd_up"),
        (lambda d: d["body_memory"].__setitem__(2, 1e9), "body_memory[2]"),
    ],
)
def test_plan_command_rejects_invalid_instance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, field: str
) -> None:
    path = tmp_path / "i.json"
    main(["gen-instance", str(path), "--model", "random", "-K", "4", "-H", "2"])
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert field in err
    assert "Traceback" not in err


def test_plan_command_rejects_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "i.json"
    main(["gen-instance", str(path), "--model", "random", "-K", "3", "-H", "2"])
    data = json.loads(path.read_text())
    data["stages"]["body_fwd"][1][1] = float("nan")
    path.write_text(json.dumps(data))
    assert main(["plan", str(path)]) == 2
    assert "stages.body_fwd[1][1]" in capsys.readouterr().err


def test_bench_planner_quick(profile_dir: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    jsonl = tmp_path / "b.jsonl"
    code = bench_planner_main(["--profiles", str(profile_dir), "--models", "vgg19",
                               "--heterogeneity", "high", "-K", "6", "-H", "2", "--seeds", "0",
                               "--time-limit", "0.1", "--bound-time", "0.5",
                               "--forms", "ms", "slotted", "--jsonl", str(jsonl)])
    assert code == 0
    out = capsys.readouterr().out
    assert "random-fcfs" in out and "auto" in out and "gap" in out
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {r["method"] for r in rows} == {"random-fcfs", "balanced-fcfs", "greedy", "auto"}
    assert all(r["gap"] >= -1e-9 for r in rows)


@pytest.mark.parametrize("model", sorted(CUTS))
@pytest.mark.parametrize("heterogeneity", ["low", "high"])
def test_generator_shapes_and_seed(profile_dir: Path, model: str, heterogeneity: str) -> None:
    first = generate_instance(model, 7, 3, heterogeneity, seed=2, profile_dir=profile_dir)
    again = generate_instance(model, 7, 3, heterogeneity, seed=2, profile_dir=profile_dir)
    for stage in STAGE_NAMES:
        matrix = first.stage(stage)
        assert matrix.shape == (7, 3)
        assert (matrix >= 0).all()
        np.testing.assert_array_equal(matrix, again.stage(stage))
    # helper stages do not depend on the link, client stages do
    assert np.allclose(first.body_fwd, first.body_fwd[0])
    assert not np.allclose(first.head_fwd_up, first.head_fwd_up[:, :1])
    assert first.meta["cuts"] == list(CUTS[model])


def test_gen_instance_slotted(profile_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    assert main(["gen-instance", str(path), "--profiles", str(profile_dir), "-K", "5",
                 "-H", "2", "--slotted"]) == 0
    instance = load_instance(path)
    client_side = max(instance.stage(s).max() for s in ("head_fwd_up", "tail_fwd_bwd",
                                                        "down_head_bwd"))
    assert client_side == 100
    assert instance.body_fwd.min() >= 1


@pytest.mark.skipif(not (SHARED_PROFILES.is_dir() or os.environ.get("FLSPLIT_PROFILES")),
                    reason="shared testbed profiles not available")
def test_published_profiles_generate() -> None:
    directory = os.environ.get("FLSPLIT_PROFILES") or SHARED_PROFILES
    for model in CUTS:
        instance = generate_instance(model, 20, 5, "low", seed=0, profile_dir=directory)
        assert instance.num_clients == 20
        assert "rpi3" not in instance.meta["client_devices"] or model == "resnet101"
