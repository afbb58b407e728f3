"""examples/llm end to end: 3 rounds of the LoRA GPT-2 split over one helper and two
clients in Flower's simulation engine. The loss falls, and after the first round a round
moves the adapters only: each client's head and tail adapters to it and back, the body's
adapters to its helper and back (the frozen weights travel once, in the first round).
Then the model is profiled at its blocks and planned for the example's nodes."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Message

from flsplit.protocol import TEST_LOSS, TRAIN_LOSS
from flsplit.simulation import simulate
from strategies.split import SplitStrategy
from tests.paths import ROOT

LLM = ROOT / "examples" / "llm"
if str(LLM) not in sys.path:
    sys.path.insert(0, str(LLM))

from llm.figures import adapter_figures  # noqa: E402
from llm.model import BLOCKS  # noqa: E402
from llm.settings import APP_DEFAULTS  # noqa: E402
from llm.task import TASK  # noqa: E402

CLIENTS = 2
RUN = {
    "num-server-rounds": 3,
    "num-helpers": 1,
    "num-clients": CLIENTS,
    "cuts": "base_model.model.transformer.h.1,base_model.model.transformer.h.5",
    "lr": 0.005,
    "batch-size": 16,
    "fraction-evaluate": 0.0,
    "round-timeout": 120.0,
}


def _array_bytes(messages: Iterable[Message]) -> int:
    """Bytes of the tensors the messages carry (shape x dtype, without framing)."""
    total = 0
    for message in messages:
        if message.has_error():
            continue
        for record in message.content.array_records.values():
            for array in record.values():
                total += int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
    return total


@pytest.fixture
def round_bytes(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[int, int]]:
    """Bytes of tensors sent to the nodes (``down``) and back (``up``) per round, as the
    ServerApp (in this process) sends and receives its train messages."""
    seen: dict[str, dict[int, int]] = {"down": defaultdict(int), "up": defaultdict(int)}
    configure, aggregate = SplitStrategy.configure_train, SplitStrategy.aggregate_train

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(configure(self, server_round, arrays, config, grid))
        seen["down"][server_round] += _array_bytes(messages)
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        seen["up"][server_round] += _array_bytes(replies)
        return aggregate(self, server_round, replies)

    monkeypatch.setattr(SplitStrategy, "configure_train", configure_train)
    monkeypatch.setattr(SplitStrategy, "aggregate_train", aggregate_train)
    return seen


def test_three_rounds_of_lora_split_learning_lower_the_loss_and_move_adapters_only(
    round_bytes,
):
    runs = []
    simulate(TASK, RUN, on_result=lambda *run: runs.append(run))
    assert len(runs) == 1, "the ServerApp did not finish"
    _, result, strategy = runs[0]
    assert len(strategy.helpers) == 1 and len(strategy.clients) == CLIENTS

    train = result.train_metrics_clientapp
    server = result.evaluate_metrics_serverapp
    figures = adapter_figures(APP_DEFAULTS)
    adapters, full = figures["adapter_bytes"], figures["full_model_bytes"]
    print(
        "\nllm: train loss", {r: round(m[TRAIN_LOSS], 3) for r, m in sorted(train.items())},
        "test loss", {r: round(m[TEST_LOSS], 3) for r, m in sorted(server.items())},
        "\nbytes down", dict(round_bytes["down"]), "up", dict(round_bytes["up"]),
        f"(adapters {adapters} B, full model {full} B, {CLIENTS} clients)",
    )
    assert set(train) == {1, 2, 3}
    assert train[3][TRAIN_LOSS] < train[1][TRAIN_LOSS]
    assert server[3][TEST_LOSS] < server[0][TEST_LOSS] - 0.2

    assert set(round_bytes["down"]) == set(round_bytes["up"]) == {1, 2, 3}
    # the frozen base reaches the nodes in the first round ...
    assert round_bytes["down"][1] >= full
    # ... afterwards a round sends each client its head and tail adapters and each helper
    # its clients' body adapters (the global body once per helper), nothing frozen ...
    for server_round in (2, 3):
        assert round_bytes["down"][server_round] <= CLIENTS * adapters * 1.05
    # ... and every round each client's adapters come back, its body's from its helper
    for server_round in (1, 2, 3):
        assert CLIENTS * adapters <= round_bytes["up"][server_round] <= CLIENTS * adapters * 1.05


def test_the_llm_is_profiled_at_its_blocks_and_planned_for_the_example_nodes(tmp_path, capsys):
    from flsplit.cli import main

    profile_path = tmp_path / "llm-profile.json"
    assert main(["profile", "--app", str(LLM), "--batch", "8", "--repeats", "1",
                 "--warmup", "0", "--out", str(profile_path)]) == 0
    profile = json.loads(profile_path.read_text())
    names = [layer["name"] for layer in profile["layers"]]
    # the embeddings and block 0, then one layer per block from block 1 on
    assert names[1:] == [f"{BLOCKS}.{i}" for i in range(1, 6)]
    adapters_in_body = adapter_figures(APP_DEFAULTS)["body_adapter_bytes"]
    assert profile["layers"][2]["activation_kib"] > 0
    assert sum(layer["weights_kib"] for layer in profile["layers"][1:5]) * 1024 > adapters_in_body
    capsys.readouterr()
    assert main(["plan", "--profiles", str(profile_path), "--nodes", str(LLM / "nodes.json"),
                 "--time-limit", "1"]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert "4 clients, 2 helpers" in printed
    for client in ("pi-a", "pi-b", "jet-a", "lap-a"):
        assert re.search(rf"^\s+{client}\s+\d+\s+\d+\s+vm-[ab]", printed, re.M), printed
