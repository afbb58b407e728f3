"""Emulated helper-helper links: the server's figures (run config ``helper-link-mbps``,
``helper-link-latency-ms``) reach the relaying helper, which waits them out on its hop
(the strategy's and planner's side: tests/unit/server/test_helper_link_emulation.py)."""

from __future__ import annotations

import pytest
import torch

from flsplit.client.helper_role import next_hop_links
from flsplit.config import parse_codec
from flsplit.protocol import NEXT_LINK_MBPS, HelperRound, ProtocolError, ServedClient
from flsplit.runtime.codecs import wire_nbytes
from flsplit.runtime.emulation import Emulation, HelperLinkTable, helper_link_table
from flsplit.runtime.relay import ChainRelay

OUT = torch.zeros(4, 250)  # this helper's output: 4000 raw bytes
CHAIN_OUT = torch.zeros(4, 10)  # the chain's output the next hop answers with


class FakeHop:
    """The next helper: answers a forward with the chain's output, a backward with the
    gradient of this helper's output."""

    codecs: dict = {}

    def __init__(self):
        self.calls = []

    def call(self, op, tensor, step, micro=0, micros=1, codec=None):
        self.calls.append(op)
        return (CHAIN_OUT.clone() if op == "fwd" else torch.ones_like(OUT)), 0.0, 0.0


def test_a_relayed_hop_waits_out_its_emulated_link_for_this_helpers_cut_only():
    waits = []
    link = Emulation(rate_mbps=8.0, latency_ms=5.0)
    relay = ChainRelay({"c": FakeHop(), "free": FakeHop()}, links={"c": link},
                       sleep=waits.append)
    relay.forward("c", OUT, step=0)
    relay.backward("c", torch.ones_like(CHAIN_OUT), step=0)
    # the output going on, then its gradient coming back: 5 ms + 4000 B at 8 Mbit/s each;
    # the chain's output and its gradient pass through uncharged (the client's link's)
    assert waits == pytest.approx([0.009, 0.009])
    assert relay.transfer_seconds("c", 4000) == pytest.approx(0.009)
    # the coded bytes are charged: int8 sends a quarter
    waits.clear()
    int8 = parse_codec("int8", "compress-activations")
    assert wire_nbytes(OUT, int8) < 4000
    relay.forward("c", OUT, step=1, codec=int8)
    assert waits == pytest.approx([0.005 + wire_nbytes(OUT, int8) * 8 / 8e6])
    # a client without an emulated hop waits for nothing
    waits.clear()
    relay.forward("free", OUT, step=0)
    relay.backward("free", torch.ones_like(CHAIN_OUT), step=0)
    assert waits == []


def test_the_next_hop_link_travels_in_the_helper_round_and_becomes_the_relays_link():
    served = [ServedClient("3", "a,b,c", 1, "h2:9000", "tok", 0, 40.0, 3.0),
              ServedClient("4", "a,b,c", 2)]
    config = HelperRound(1, served, b"key", "0.0.0.0:9000", 60.0).to_config({})
    back = HelperRound.from_config(config)
    assert back.clients == served
    assert next_hop_links(back.clients) == {"3": Emulation(rate_mbps=40.0, latency_ms=3.0)}
    config[NEXT_LINK_MBPS] = [-1.0, 0.0]
    with pytest.raises(ProtocolError, match="next-hop link"):
        HelperRound.from_config(config)


def test_helper_link_table_draws_one_rate_per_pair_both_ways_and_only_with_emulate():
    table = HelperLinkTable("100-1000", 2.0, seed=5)
    rate, latency = table(0, 3)
    assert table(3, 0) == (rate, latency) and 100 <= rate <= 1000 and latency == 2.0
    assert helper_link_table({"helper-link-mbps": "40"}) is None  # no emulate: free
    assert helper_link_table({"emulate": True}) is None
    assert helper_link_table({"emulate": True, "helper-link-latency-ms": 4.0})(0, 1) == (
        0.0, 4.0)
    with pytest.raises(ValueError, match="helper-link-mbps item 'fast'"):
        helper_link_table({"emulate": True, "helper-link-mbps": "fast"})
