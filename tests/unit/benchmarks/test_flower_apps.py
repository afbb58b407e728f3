"""The parsing part of ``benchmarks.flower_apps``: accuracy, rounds and errors from a
``flwr run`` log or an app's results file, and what two runs wrote and logged, compared.
No simulation runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.flower_apps import (
    AccuracySource,
    Run,
    accuracy_from_json,
    accuracy_from_log,
    compare_logs,
    error_lines,
    log_signature,
    mask,
    missing_outputs,
    rounds_done,
    strategy_seconds,
    summary,
    written_files,
)

# Flower 1.42's strategy loop as `flwr run --stream` prints it (colour codes included).
LOG = """\
\x1b[92mINFO \x1b[0m:      Initial global evaluation results: {'accuracy': 0.11, 'loss': 2.30}
\x1b[92mINFO \x1b[0m:      [ROUND 1/2]
\x1b[92mINFO \x1b[0m:      \t\u2514\u2500\u2500> Aggregated MetricRecord: {'train_loss': 2.2}
\x1b[92mINFO \x1b[0m:      Global evaluation
\x1b[92mINFO \x1b[0m:      \t\u2514\u2500\u2500> MetricRecord: {'accuracy': 0.25, 'loss': 2.1}
\x1b[92mINFO \x1b[0m:      [ROUND 2/2]
\x1b[92mINFO \x1b[0m:      \t\u2514\u2500\u2500> Aggregated MetricRecord: {'val_accuracy': 0.9}
\x1b[92mINFO \x1b[0m:      Global evaluation
\x1b[92mINFO \x1b[0m:      \t\u2514\u2500\u2500> MetricRecord: {'accuracy': 0.5, 'loss': 1.5}
\x1b[92mINFO \x1b[0m:      Strategy execution finished in 49.24s
"""


def test_log_accuracy_is_the_last_global_evaluation_not_a_client_metric() -> None:
    assert accuracy_from_log(LOG) == 0.5
    assert accuracy_from_log(LOG, "loss") == 1.5
    assert accuracy_from_log(LOG, "val_accuracy") is None  # the clients' aggregate is not read
    assert accuracy_from_log(LOG.split("[ROUND 1/2]")[0]) is None  # round 0 only
    assert rounds_done(LOG) == 2
    assert strategy_seconds(LOG) == pytest.approx(49.24)


def test_json_path_reads_the_last_round_of_a_results_file() -> None:
    results = [
        {"round": 1, "evaluate_metrics_serverapp": {"accuracy": 0.2}},
        {"round": 2, "evaluate_metrics_serverapp": {"accuracy": 0.6}},
    ]
    assert accuracy_from_json(results, "-1.evaluate_metrics_serverapp.accuracy") == 0.6
    assert accuracy_from_json(results, "0.evaluate_metrics_serverapp.accuracy") == 0.2
    assert accuracy_from_json(results, "5.evaluate_metrics_serverapp.accuracy") is None
    assert accuracy_from_json(results, "-1.round") == 2.0
    assert accuracy_from_json(results, "-1.missing") is None


def test_accuracy_source_auto_prefers_a_results_file_and_falls_back_to_the_log(
    tmp_path: Path,
) -> None:
    auto = AccuracySource.parse("auto")
    assert auto.read(tmp_path, LOG) == (0.5, "log")
    out = tmp_path / "outputs" / "2026-01-01" / "10-00-00"
    out.mkdir(parents=True)
    (out / "results.json").write_text(
        json.dumps([{"round": 2, "evaluate_metrics_serverapp": {"accuracy": 0.7}}])
    )
    assert auto.read(tmp_path, LOG) == (0.7, "outputs/2026-01-01/10-00-00/results.json")
    assert AccuracySource.parse("log").read(tmp_path, LOG) == (0.5, "log")
    custom = AccuracySource.parse("json:outputs/*/*/results.json#0.round")
    assert custom.read(tmp_path, LOG)[0] == 2.0
    assert AccuracySource.parse("json:nothing/*.json").read(tmp_path, LOG)[0] is None
    regex = AccuracySource.parse(r"regex:'loss': ([\d.]+)")
    assert regex.read(tmp_path, LOG) == (1.5, "log (regex)")
    with pytest.raises(ValueError, match="auto, log"):
        AccuracySource.parse("results")


def test_error_lines_start_at_the_first_error() -> None:
    log = LOG + "\x1b[91mERROR \x1b[0m:     Simulation raised an exception\nTraceback ...\n"
    assert error_lines(log)[0].startswith("ERROR")
    assert error_lines(LOG) == []


def test_masking_makes_two_runs_comparable() -> None:
    assert mask("outputs/2026-12-02/03-43-28/model_state_acc_0.70_round_5.pth") == (
        "outputs/#-#-#/#-#-#/model_state_acc_#_round_#.pth"
    )
    assert mask("wandb/offline-run-20261202_034329-64joybs1/run-64joybs1.wandb") == (
        "wandb/offline-run-#_#-*/run-*.wandb"
    )
    assert mask("flwrlabs.pytorch-example.1.0.0.0f851426 run 13928111637385446499") == (
        "flwrlabs.pytorch-example.#.#.* run #"
    )


def test_log_comparison_tells_missing_lines_from_lines_with_more_keys() -> None:
    plain = log_signature(LOG + "INFO : New best model saved to disk: m_0.5.pth\n")
    split = log_signature(
        LOG.replace("{'train_loss': 2.2}", "{'train_loss': 2.2, 'batches': 10.0}")
    )
    missing, extended = compare_logs(plain, split)
    assert missing == ["INFO : New best model saved to disk: m_#.pth"]
    assert extended == {"INFO : \u2514\u2500\u2500> Aggregated MetricRecord: {'train_loss': #}":
                        ["batches"]}


def test_missing_outputs_and_summary_compare_plain_and_split(tmp_path: Path) -> None:
    runs = []
    for mode, seed, acc, files in (
        ("plain", 0, 0.50, ["final_model.pt", "outputs/2026-01-01/10-00-00/results.json"]),
        ("split", 0, 0.55, ["final_model.pt"]),
        ("plain", 1, 0.60, ["final_model.pt"]),
        ("split", 1, None, []),
    ):
        run_dir = tmp_path / f"{mode}-seed{seed}"
        for name in [*files, "flwr-home/state.db"]:
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_text("x")
        (run_dir / "flwr-run.log").write_text(f"$ flwr run {run_dir}\n" + LOG)
        runs.append(Run("app", mode, seed, 4, str(run_dir), accuracy=acc, wall_s=60.0))
    assert written_files(tmp_path / "split-seed0") == {"final_model.pt"}
    missing = missing_outputs(runs)
    assert missing["files"] == ["final_model.pt", "outputs/#-#-#/#-#-#/results.json"]
    assert missing["log_lines"] == []
    figures = summary(runs)
    assert figures["plain"]["mean_accuracy"] == pytest.approx(0.55)
    assert figures["split"]["mean_accuracy"] == pytest.approx(0.55)
    assert figures["split"]["failed"] == 1
    assert figures["diff_points_per_seed"] == {0: pytest.approx(5.0)}
    assert figures["mean_diff_points"] == pytest.approx(5.0)
