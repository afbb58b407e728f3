"""Node settings: role, data partition, index, device, emulation, addresses, TLS."""

import socket
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from flsplit.client import node
from flsplit.client.node import (
    ROLE_CLIENT,
    ROLE_HELPER,
    client_tls,
    data_partition,
    helper_addresses,
    helper_tls,
    node_device,
    node_emulation,
    node_index,
    node_role,
    simulation_concurrency,
)
from flsplit.runtime import emulation
from flsplit.runtime.dataplane import DataPlaneError
from flsplit.runtime.emulation import NO_EMULATION

PEM = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n"


def context(**node_config: Any) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def simulated(partition: int, partitions: int = 5) -> Context:
    """A simulation node: its node config only has the partition keys."""
    return context(**{"partition-id": partition, "num-partitions": partitions})


# -- role ------------------------------------------------------------------------------


def test_the_node_config_role_decides_in_deployment():
    config = {"num-helpers": 3}
    assert node_role(context(role="helper", **{"partition-id": 4}), config) == ROLE_HELPER
    assert node_role(context(role="client", **{"partition-id": 0}), config) == ROLE_CLIENT


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="is not 'client' or 'helper'"):
        node_role(context(role="server"), {"num-helpers": 1})


def test_in_simulation_the_first_num_helpers_partitions_are_helpers():
    config = {"num-helpers": 2}
    roles = [node_role(simulated(p), config) for p in range(5)]
    assert roles == [ROLE_HELPER, ROLE_HELPER, ROLE_CLIENT, ROLE_CLIENT, ROLE_CLIENT]


def test_a_node_without_role_or_partition_is_a_client():
    assert node_role(context(), {"num-helpers": 2}) == ROLE_CLIENT


# -- data partition --------------------------------------------------------------------


def test_in_simulation_client_partitions_are_shifted_by_num_helpers():
    config = {"num-helpers": 2}
    assert data_partition(simulated(2), config) == (0, 3)
    assert data_partition(simulated(4), config) == (2, 3)


def test_a_simulation_node_without_partition_keys_is_the_first_of_one_client():
    assert data_partition(context(), {"num-helpers": 2}) == (0, 1)


def test_a_simulation_of_helpers_only_is_refused():
    with pytest.raises(ValueError, match="leaves no client among 2 simulated nodes"):
        data_partition(simulated(0, partitions=2), {"num-helpers": 2})


def test_in_deployment_the_node_config_names_the_partition_unshifted():
    node_config = {"role": "client", "partition-id": 3, "num-partitions": 8}
    assert data_partition(context(**node_config), {"num-helpers": 2}) == (3, 8)
    assert data_partition(context(role="client"), {"num-helpers": 2}) == (0, 1)


# -- index -----------------------------------------------------------------------------


def test_a_client_index_is_its_data_partition_and_a_helper_index_its_number():
    config = {"num-helpers": 2}
    assert node_index(simulated(3), config, ROLE_CLIENT) == 1
    assert node_index(simulated(1), config, ROLE_HELPER) == 1
    helper = context(role="helper", **{"helper-index": 5, "partition-id": 0})
    assert node_index(helper, config, ROLE_HELPER) == 5


# -- device and emulation --------------------------------------------------------------


def test_the_node_config_device_wins_over_the_emulation_draw():
    config = {"num-helpers": 1, "emulate": True, "client-devices": "rpi3"}
    assert node_device(context(device="laptop", role="client"), config, ROLE_CLIENT) == "laptop"


def test_without_emulation_or_node_config_there_is_no_device():
    assert node_device(simulated(2), {"num-helpers": 1}, ROLE_CLIENT) == ""


def test_with_emulation_the_device_is_drawn_from_the_run_config_list_by_index():
    config = {"num-helpers": 1, "emulate": True, "client-devices": "rpi3, rpi4, laptop",
              "seed": 11}
    drawn = [node_device(simulated(p), config, ROLE_CLIENT) for p in range(1, 5)]
    # client partitions 1..4 are data partitions 0..3: the draw uses the shifted index
    assert drawn == [emulation.device_for(ROLE_CLIENT, i, config) for i in range(4)]
    assert set(drawn) <= {"rpi3", "rpi4", "laptop"}
    assert drawn == [node_device(simulated(p), config, ROLE_CLIENT) for p in range(1, 5)]


def test_an_unemulated_node_has_no_emulation():
    unemulated = node_emulation(simulated(2), {"num-helpers": 1}, ROLE_CLIENT, 2, link=(40.0, 5.0))
    assert unemulated is NO_EMULATION


def test_an_emulated_node_slows_by_its_device_its_slowdown_and_its_link():
    config = {
        "num-helpers": 1,
        "emulate": True,
        "emulation-host": "vm",
        "slowdown": "client:0:3:2",
    }
    client = context(device="rpi4", role="client", **{"partition-id": 0})
    expected = emulation.compute_factor("rpi4", config) * 3
    linked = node_emulation(client, config, ROLE_CLIENT, 2, link=(40.0, 5.0))
    assert linked.compute_factor == pytest.approx(expected)
    assert (linked.rate_mbps, linked.latency_ms) == (40.0, 5.0)
    unlinked = node_emulation(client, config, ROLE_CLIENT, 2)
    assert (unlinked.rate_mbps, unlinked.latency_ms) == (0.0, 0.0)
    earlier = node_emulation(client, config, ROLE_CLIENT, 1)
    assert earlier.compute_factor == pytest.approx(expected / 3)


# -- data-plane addresses --------------------------------------------------------------


def test_a_deployed_helper_listens_on_all_interfaces_and_advertises_its_host_name():
    listen, advertised = helper_addresses(context(role="helper"))
    assert listen == "0.0.0.0:9800"
    assert advertised == f"{socket.gethostname()}:9800"


def test_a_deployed_helper_advertises_its_listen_host_or_the_configured_address():
    bound = context(**{"data-address": "10.0.0.5:9901"})
    assert helper_addresses(bound) == ("10.0.0.5:9901", "10.0.0.5:9901")
    nat = context(role="helper", **{"advertise-address": "helper.example:443"})
    assert helper_addresses(nat) == ("0.0.0.0:9800", "helper.example:443")


def test_a_simulated_helper_listens_on_a_free_loopback_port():
    listen, advertised = helper_addresses(simulated(0))
    host, port = listen.rsplit(":", 1)
    assert listen == advertised
    assert host == "127.0.0.1" and int(port) > 0


# -- TLS -------------------------------------------------------------------------------


def test_tls_material_is_read_from_the_files_the_node_config_names(tmp_path):
    (tmp_path / "h.pem").write_bytes(PEM)
    (tmp_path / "h.key").write_bytes(KEY)
    helper = context(**{"data-tls-cert": str(tmp_path / "h.pem"),
                        "data-tls-key": str(tmp_path / "h.key")})
    assert helper_tls(helper) == (PEM, KEY)
    client = context(**{"data-tls-root-cert": str(tmp_path / "h.pem")})
    assert client_tls(client) == (PEM, None)


def test_without_tls_keys_the_data_plane_is_plaintext():
    assert helper_tls(context(role="helper")) is None
    assert client_tls(context(role="client")) == (None, None)


def test_a_key_without_certificate_is_refused(tmp_path):
    (tmp_path / "h.key").write_bytes(KEY)
    with pytest.raises(ValueError, match="go together"):
        helper_tls(context(**{"data-tls-key": str(tmp_path / "h.key")}))


def test_a_missing_tls_file_names_its_config_key(tmp_path):
    (tmp_path / "h.pem").write_bytes(PEM)
    missing = context(**{"data-tls-cert": str(tmp_path / "h.pem"),
                         "data-tls-key": str(tmp_path / "absent.key")})
    with pytest.raises(DataPlaneError, match="data-tls-key: cannot read"):
        helper_tls(missing)
    with pytest.raises(DataPlaneError, match="data-tls-root-cert: cannot read"):
        client_tls(context(**{"data-tls-root-cert": str(tmp_path / "absent.pem")}))


# -- simulation concurrency ------------------------------------------------------------


class _FakeRay:
    """The parts of the ray module simulation_concurrency reads."""

    def __init__(self, assigned: float, total: float) -> None:
        self.assigned, self.total = assigned, total

    def is_initialized(self) -> bool:
        return True

    def get_runtime_context(self) -> Any:
        assigned = self.assigned

        class _Runtime:
            def get_assigned_resources(self) -> dict[str, float]:
                return {"CPU": assigned}

        return _Runtime()

    def cluster_resources(self) -> dict[str, float]:
        return {"CPU": self.total}


def test_concurrency_is_what_the_ray_resources_allow(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", _FakeRay(assigned=0.5, total=4))
    assert simulation_concurrency() == 8
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(assigned=1, total=12))
    assert simulation_concurrency() == 12  # the engine's own limit is the server's to check


def test_concurrency_is_unknown_outside_ray(monkeypatch):
    import sys

    fake = _FakeRay(assigned=1, total=4)
    monkeypatch.setattr(fake, "is_initialized", lambda: False)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert simulation_concurrency() is None


def test_a_clients_node_config_shows_its_data_partition_while_a_message_is_handled():
    ctx = simulated(3, 5)
    seen = {}
    with node.client_partition_view(ctx, {"num-helpers": 2}):
        seen["view"] = (ctx.node_config["partition-id"], ctx.node_config["num-partitions"])
        # flsplit's own reads inside the view are not shifted twice
        seen["data"] = data_partition(ctx, {"num-helpers": 2})
        seen["role"] = node_role(ctx, {"num-helpers": 2})
    assert seen == {"view": (1, 3), "data": (1, 3), "role": ROLE_CLIENT}
    assert (ctx.node_config["partition-id"], ctx.node_config["num-partitions"]) == (3, 5)


def test_helpers_and_deployed_nodes_keep_their_node_config():
    helper = simulated(1, 5)
    with node.client_partition_view(helper, {"num-helpers": 2}):
        assert helper.node_config["partition-id"] == 1
        assert node_role(helper, {"num-helpers": 2}) == ROLE_HELPER
    deployed = context(role="client", **{"partition-id": 4, "num-partitions": 9})
    with node.client_partition_view(deployed, {"num-helpers": 2}):
        assert deployed.node_config["partition-id"] == 4


def test_a_simulation_without_num_helpers_in_its_run_config_is_refused_naming_the_key():
    expected = r"no num-helpers.*\[tool.flwr.app.config\].*num-helpers = 2"
    with pytest.raises(ValueError, match=expected):
        node.check_simulation_roles(simulated(3), declared=False)
    node.check_simulation_roles(simulated(3), declared=True)
    node.check_simulation_roles(context(role="client"), declared=False)  # deployment


def test_compute_device_reads_torch_devices_and_leaves_presets_alone():
    import torch

    assert node.compute_device(context(device="cpu")) == torch.device("cpu")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert node.compute_device(context()).type == auto
    assert node.compute_device(context(device="rpi4")).type == auto  # a preset name
    assert node_device(context(device="cpu"), {}, ROLE_CLIENT) == ""
    assert node_device(context(device="rpi4"), {}, ROLE_CLIENT) == "rpi4"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda:1'.*has 0 CUDA"):
            node.compute_device(context(device="cuda:1"))


def test_a_lifespan_registered_after_enable_split_learning_is_refused_naming_the_fix(
    monkeypatch,
):
    from flwr.app import Message
    from flwr.clientapp import ClientApp
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    # Outside Flower's processes nobody sets who is sending; Message() reads it.
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)

    from flsplit import SplitTask, enable_split_learning
    from flsplit.model.zoo import SmallCNN
    from flsplit.protocol import QUERY

    def make_app(lifespan_first: bool) -> ClientApp:
        app = ClientApp()
        task = SplitTask(model_fn=lambda cfg: SmallCNN(), example_input=lambda cfg: None,
                         load_data=lambda pid, n, cfg: ([], []))
        if not lifespan_first:
            enable_split_learning(app, task, {"num-helpers": 1})

        @app.lifespan()
        def lifespan(context):  # the app's own set-up around every message
            yield

        if lifespan_first:
            enable_split_learning(app, task, {"num-helpers": 1})
        return app

    def query(app: ClientApp) -> Message:
        return app(Message(RecordDict(), dst_node_id=7, message_type=QUERY), simulated(3))

    # the app's lifespan first: flsplit's view wraps it and the query is answered
    assert not query(make_app(lifespan_first=True)).has_error()
    with pytest.raises(RuntimeError, match=r"@app.lifespan\(\)` registered after.*Register"):
        query(make_app(lifespan_first=False))
