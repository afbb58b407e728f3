"""Who serves whom in a round: helper assignment, chains of helpers, round tokens per hop.

A client's chain is the list of helpers its body runs on, in order
(``client -> h1 -> h2 -> ... -> client``); without chains it is one helper long, and
round-robin chains use only the helper links that exist (:mod:`strategies.helper_links`).
Every (client, helper) hop gets its own round token (:mod:`flsplit.runtime.auth`):
HMAC-signed for (run, round, client, helper) with a key derived per helper from a per-run
secret the server never sends. Each helper gets only its key, each client only the token for its
first helper, and a helper in a chain the client's token for its next hop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flsplit.runtime.auth import helper_key, new_run_secret, sign_token
from strategies.helper_links import HelperLinks

NO_HELPERS = (
    "no helper node found: in simulation set the run config num-helpers >= 1 "
    "(and num-supernodes > num-helpers); in deployment start a SuperNode with "
    "--node-config 'role=\"helper\"'"
)


@dataclass
class RoundAssignment:
    """Who serves whom in one round."""

    helper_of: dict[int, int]
    tokens: dict[int, str]
    started: float
    cuts_of: dict[int, str] = field(default_factory=dict)
    chain_of: dict[int, list[int]] = field(default_factory=dict)
    #: client -> micro-batches per batch of its planned chain (absent: the run config's)
    micro_of: dict[int, int] = field(default_factory=dict)


def round_outcome(
    assignment: RoundAssignment, replied: Iterable[int], completed: Iterable[int], aggregated: bool
) -> dict[str, Any]:
    """What became of a round's assignment, JSON-ready (the run status keeps it): the
    clients sent a training message (``clients``: those assigned, and in FedAvg mode those
    that ``replied``), those whose update came back complete (``completed``) and the
    others (``failed``), whether the round was ``aggregated`` (enough complete updates)
    and the helper that served each client (``helper-of``, the first of its chain)."""
    done = set(completed)
    clients = sorted(set(assignment.helper_of) | set(replied) | done)
    return {
        "clients": clients,
        "completed": sorted(done),
        "failed": [c for c in clients if c not in done],
        "aggregated": aggregated,
        "helper-of": {str(c): h for c, h in sorted(assignment.helper_of.items())},
    }


def round_robin(
    helpers: Sequence[int], server_round: int, clients: Sequence[int]
) -> dict[int, int]:
    """Assign the sorted ``clients`` to ``helpers`` in turn, starting one further each round.

    Raises
    ------
    RuntimeError
        If there are no helpers.
    """
    if not helpers:
        raise RuntimeError(NO_HELPERS)
    offset = server_round - 1
    return {c: helpers[(i + offset) % len(helpers)] for i, c in enumerate(sorted(clients))}


def round_robin_chains(
    helpers: Sequence[int],
    server_round: int,
    clients: Sequence[int],
    length: int,
    links: HelperLinks | None = None,
) -> dict[int, list[int]]:
    """Give each client a chain of ``length`` distinct helpers, each linked to the next.

    Client ``i`` (in sorted order) starts at helper ``i + round - 1`` and takes the next
    ones in turn, so every helper serves pieces of many clients and, over the clients,
    every position of the chain. Where ``links`` leave out a link, the route is the first
    found in that turn (:func:`linked_route`): the first helper from ``i + round - 1`` on,
    each next one from its predecessor on; with every link that is the rotation above.

    Raises
    ------
    RuntimeError
        If fewer than ``length`` helpers are known, or the links leave no route of
        ``length`` helpers (naming the chain length, the links and the fix).
    """
    if len(helpers) < length:
        raise RuntimeError(
            f"chain-length={length} needs at least {length} helper nodes, "
            f"{len(helpers)} answered discovery: lower chain-length, or raise num-helpers "
            "(simulation) / start more helper SuperNodes (deployment)"
        )
    offset = server_round - 1
    if links is None:
        return {
            c: [helpers[(i + offset + j) % len(helpers)] for j in range(length)]
            for i, c in enumerate(sorted(clients))
        }
    known: dict[tuple[int, int], bool] = {}

    def linked(a: int, b: int) -> bool:
        if (a, b) not in known:
            known[(a, b)] = known[(b, a)] = links.linked(helpers[a], helpers[b])
        return known[(a, b)]

    chains = {}
    for i, client in enumerate(sorted(clients)):
        route = linked_route(len(helpers), (i + offset) % len(helpers), length, linked)
        if route is None:  # the search tries every start: no client has a route
            raise RuntimeError(
                f"chain-length={length}: no route of {length} helpers each linked to the "
                f"next among the {len(helpers)} helpers (helper links by index: "
                f"{links.describe(helpers)}; run config helper-links and the helpers' node "
                "config helper-links): lower chain-length, or add links (run config "
                "helper-links, empty = all; a helper's node config helper-links)"
            )
        chains[client] = [helpers[j] for j in route]
    return chains


def linked_route(
    count: int, start: int, length: int, linked: Callable[[int, int], bool]
) -> list[int] | None:
    """A route of ``length`` distinct positions among ``count`` helpers, each linked to
    the next, or ``None`` if there is none.

    Depth first, in round-robin turn: the first helper from ``start`` on, each next one
    from its predecessor on (``p + 1, p + 2, ...`` mod ``count``); the first complete
    route wins, so the result is deterministic and, with every link, is ``start, start +
    1, ...``. Dead ends (a last helper and the set visited) are remembered, so no state is
    searched twice.
    """
    dead: set[tuple[int, frozenset[int]]] = set()

    def extend(route: list[int]) -> list[int] | None:
        if len(route) == length:
            return route
        last, visited = route[-1], frozenset(route)
        if (last, visited) in dead:
            return None
        for step in range(1, count):
            nxt = (last + step) % count
            if nxt not in visited and linked(last, nxt):
                found = extend([*route, nxt])
                if found is not None:
                    return found
        dead.add((last, visited))
        return None

    for step in range(count):
        found = extend([(start + step) % count])
        if found is not None:
            return found
    return None


@dataclass
class RoundTokens:
    """The keys and tokens of one round.

    Attributes
    ----------
    keys : dict
        Helper -> the key it checks its tokens with (sent to that helper only).
    hops : dict
        (client, helper) -> the client's token at that helper.
    """

    keys: dict[int, bytes]
    hops: dict[tuple[int, int], str]

    def first_hop(self, chain_of: Mapping[int, Sequence[int]]) -> dict[int, str]:
        """Each client's token for the first helper of its chain (the one it is sent)."""
        return {c: self.hops[(c, chain[0])] for c, chain in chain_of.items()}


class TokenIssuer:
    """Signs round tokens with keys derived from one secret per run.

    The secret is made at the first round of a run and again whenever the run id
    changes, and never leaves this object.
    """

    def __init__(self) -> None:
        self._run_secret: tuple[int, bytes] | None = None  # (run id, secret)

    def issue(
        self, run_id: int, server_round: int, chain_of: Mapping[int, Sequence[int]]
    ) -> RoundTokens:
        """Keys for the helpers of ``chain_of`` and a token for every (client, helper) hop."""
        if self._run_secret is None or self._run_secret[0] != run_id:
            self._run_secret = (run_id, new_run_secret())
        secret = self._run_secret[1]
        used = {h for chain in chain_of.values() for h in chain}
        keys = {h: helper_key(secret, run_id, h) for h in used}
        hops = {
            (c, h): sign_token(keys[h], run_id, server_round, c, h)
            for c, chain in chain_of.items()
            for h in chain
        }
        return RoundTokens(keys, hops)
