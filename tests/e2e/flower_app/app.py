"""A Flower app written the way Flower's quickstart-pytorch is, turned into split learning
by the statements marked ``# flsplit`` (the README's diff). Data: the offline digits, served as
``{"img", "label"}`` dict batches like Flower Datasets' loaders. Its ``pyproject.toml`` names
``server`` and ``client``, so ``flwr run`` and ``flsplit simulate`` run it as any Flower app."""

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader

from flsplit import SplitTask, enable_split_learning  # flsplit
from strategies import SplitStrategy  # flsplit

RESULTS = []


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 2 * 2)
        return self.fc2(F.relu(self.fc1(x)))


def load_data(partition_id, num_partitions, batch_size):
    digits = load_digits()
    images = torch.tensor(digits.images[:600] / 16.0, dtype=torch.float32)[:, None]
    labels = torch.tensor(digits.target[:600])
    items = [{"img": x, "label": y} for x, y in zip(images, labels, strict=True)]
    part = items[partition_id::num_partitions]
    return DataLoader(part[20:], batch_size=batch_size), DataLoader(part[:20], batch_size=20)


def count_round(state):
    """The app's own state across rounds: how many rounds this client trained."""
    record = state.get("counter", ConfigRecord({"rounds": 0}))
    record["rounds"] = int(record["rounds"]) + 1
    state["counter"] = record


def train_fn(net, loader, lr):
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    for batch in loader:
        optimizer.zero_grad()
        F.cross_entropy(net(batch["img"]), batch["label"]).backward()
        optimizer.step()


client = ClientApp()


@client.train()
def train(msg: Message, context: Context):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
    trainloader, _ = load_data(pid, n, 32)
    train_fn(model, trainloader, msg.content["config"]["lr"])
    count_round(context.state)
    metrics = MetricRecord({"num-examples": len(trainloader.dataset)})
    return Message(
        RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg
    )


@client.evaluate()
def evaluate(msg: Message, context: Context):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid, n = context.node_config["partition-id"], context.node_config["num-partitions"]
    _, valloader = load_data(pid, n, 32)
    batch = next(iter(valloader))
    acc = float((model(batch["img"]).argmax(1) == batch["label"]).float().mean())
    rounds = int(context.state.get("counter", ConfigRecord({"rounds": 0}))["rounds"])
    metrics = MetricRecord({
        "eval_acc": acc, "num-examples": len(valloader.dataset), "rounds-trained": rounds,
        "partition-id": pid, "num-partitions": n,
    })
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


# flsplit
enable_split_learning(
    client,
    SplitTask(
        model_fn=lambda cfg: Net(),
        example_input=lambda cfg: torch.zeros(1, 1, 8, 8),
        load_data=lambda pid, n, cfg: load_data(pid, n, 32),
        train_fn=lambda net, loader, cfg, device: train_fn(net, loader, cfg["lr"]),
        save_state=lambda net, ctx: count_round(ctx.state),
    ),
    {"num-helpers": 1},  # for Flower's Python API; flwr run reads pyproject.toml
)

server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    # Flower's Python simulation API passes no run config: the pyproject's values then
    fraction_evaluate = context.run_config.get("fraction-evaluate", 1.0)
    num_rounds = context.run_config.get("num-server-rounds", 2)
    lr = context.run_config.get("lr", 0.1)
    arrays = ArrayRecord(Net().state_dict())
    # flsplit: was `strategy = FedAvg(fraction_evaluate=fraction_evaluate)`
    strategy = SplitStrategy.for_model(
        Net(),
        torch.zeros(1, 1, 8, 8),
        cuts="conv2,fc2",
        strategy=FedAvg(fraction_evaluate=fraction_evaluate),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
    )
    RESULTS.append((arrays, result, strategy))
    print("\nSaving final model to disk...")
    torch.save(result.arrays.to_torch_state_dict(), "final_model.pt")
