"""The profiler's output format and the device presets against the published data."""

import json
import math

import pytest
import torch

from flsplit.cli import main
from flsplit.model.presets import PRESETS, preset
from flsplit.model.profile import profile_model, validate_profile, write_profile
from flsplit.model.splitting import candidate_cuts
from flsplit.model.zoo import SmallCNN
from tests.paths import ROOT, SHARED_PROFILES

SHARED = SHARED_PROFILES
PUBLISHED = sorted(SHARED.glob("*.json"))


def test_profile_of_a_small_cnn_follows_the_shared_format(tmp_path):
    model = SmallCNN(3, 32)
    example = torch.randn(4, 3, 32, 32)
    profile = profile_model(model, example, model_name="small-cnn", repeats=2, warmup=1)
    validate_profile(profile)
    layers = profile["layers"]
    assert len(layers) == len(candidate_cuts(model, example)) + 1
    total_weights = sum(p.numel() * 4 for p in model.parameters()) / 1024
    assert math.isclose(sum(layer["weights_kib"] for layer in layers), total_weights, rel_tol=1e-3)
    conv1 = next(layer for layer in layers if layer["name"] == "conv1")
    assert conv1["activation_kib"] == 4 * 16 * 32 * 32 * 4 / 1024
    assert layers[-1]["activation_kib"] == pytest.approx(4 * 10 * 4 / 1024, abs=1e-3)
    device = profile["devices"]["this-machine"]
    assert all(t > 0 for t in device["forward_ms"])
    assert device["backward_ms"][layers.index(conv1)] > 0
    path = write_profile(profile, tmp_path / "p.json")
    assert json.loads(path.read_text())["batch_size"] == 4


def test_flsplit_profile_app_measures_the_apps_own_model(tmp_path, capsys):
    out = tmp_path / "quickstart.json"
    app = ROOT / "examples" / "quickstart"
    assert main(["profile", "--app", str(app), "--batch", "4", "--repeats", "1",
                 "--warmup", "0", "--out", str(out)]) == 0
    profile = json.loads(out.read_text())
    validate_profile(profile)
    assert (profile["model"], profile["batch_size"]) == ("quickstart", 4)
    # the app's model (quickstart's SmallCNN on 8x8 digits, one channel), not --model's
    model, example = SmallCNN(1, 8), torch.zeros(4, 1, 8, 8)
    assert [layer["name"] for layer in profile["layers"]] == [
        "conv1", *candidate_cuts(model, example)
    ]
    conv1 = profile["layers"][0]
    assert conv1["activation_kib"] == 4 * 16 * 8 * 8 * 4 / 1024


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.name)
def test_published_profiles_pass_the_same_validation(path):
    validate_profile(json.loads(path.read_text()))


def test_validation_names_the_bad_field():
    profile = {"model": "m", "layers": [{"activation_kib": 1, "weights_kib": -1}], "devices": {}}
    with pytest.raises(ValueError, match=r"layers\[0\].weights_kib"):
        validate_profile(profile)
    profile["layers"][0]["weights_kib"] = 1
    profile["devices"] = {"d": {"forward_ms": [1, 2], "backward_ms": [1], "update_ms": [1]}}
    with pytest.raises(ValueError, match=r"devices\['d'\].forward_ms"):
        validate_profile(profile)


@pytest.mark.skipif(not PUBLISHED, reason="shared profiles not present")
@pytest.mark.parametrize("name", ["laptop", "rpi4", "rpi3", "jetson-cpu", "jetson-gpu"])
def test_preset_factors_summarise_the_published_measurements(name):
    """Each factor is the geometric mean over both models of the device's total time
    over the VM's (non-zero totals only)."""
    for kind, factor in (
        ("forward_ms", PRESETS[name].forward),
        ("backward_ms", PRESETS[name].backward),
    ):
        ratios = []
        for path in PUBLISHED:
            devices = json.loads(path.read_text())["devices"]
            ratios.append(sum(devices[name][kind]) / sum(devices["vm-8vcpu"][kind]))
        expected = math.exp(sum(map(math.log, ratios)) / len(ratios))
        assert factor == pytest.approx(expected, rel=0.01), (name, kind)


def test_presets_scale_times_and_unknown_names_are_refused():
    fwd, bwd, upd = preset("rpi4").scale([1.0, 2.0], [1.0, 1.0], [1.0, 0.0])
    assert fwd == [pytest.approx(31.77), pytest.approx(63.54)]
    assert bwd[0] == pytest.approx(37.19) and upd == [pytest.approx(24.12), 0.0]
    with pytest.raises(ValueError, match="unknown device preset 'pi5'; known presets: "):
        preset("pi5")


def test_own_time_leaves_out_waiting_for_a_core(monkeypatch):
    # a machine busy with other processes: every step waits 50 ms of wall time for a
    # core, which the CPU time does not count; own_time profiles the segments' cost
    import flsplit.model.profile as profile

    real = profile.time.perf_counter
    calls = {"n": 0}

    def busy_wall() -> float:
        calls["n"] += 1
        return real() + 0.05 * calls["n"]

    monkeypatch.setattr(profile.time, "perf_counter", busy_wall)
    model, batch = SmallCNN(1, 8), torch.zeros(4, 1, 8, 8)
    wall = profile_model(model, batch, repeats=2, warmup=0)
    own = profile_model(model, batch, repeats=2, warmup=0, own_time=True)
    wall_fwd = wall["devices"]["this-machine"]["forward_ms"]
    own_fwd = own["devices"]["this-machine"]["forward_ms"]
    assert min(wall_fwd) >= 50.0
    assert max(own_fwd) < 50.0
