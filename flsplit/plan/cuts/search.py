"""Local search over cut pairs and helper assignment (simulated annealing).

A state is a cut pair and a helper per client; each helper's order is rebuilt by the
planner's priority rules
(:func:`flsplit.plan.scheduling.sequencing.best_list_schedule`) whenever its
clients or their pairs change, so a move costs one or two one-helper schedules. Moves:

- *repick*: one client takes a neighbouring cut pair (each cut one candidate up or
  down) on its helper;
- *move*: one client goes to another helper, keeping its pair or taking a neighbour;
- *swap*: two clients of different helpers exchange helpers (pairs kept or moved to a
  neighbour).

Half of the moves start from the helper that finishes last. A move is accepted when it
lowers ``max(finish) + spread_weight * mean(finish)`` over helpers (the second term
rewards shortening helpers that are not yet critical), or with the Metropolis
probability at a temperature that falls linearly to zero by the deadline. Memory (the
client's own and the helper's, summed over its bodies) is checked before every move.
The best state seen, by makespan, is returned; it is never worse than the start.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from flsplit.plan.cuts.problem import CutProblem
from flsplit.plan.evaluator import IndexTask, helper_finish
from flsplit.plan.scheduling.sequencing import best_list_schedule

#: Weight of the mean helper finish in the annealing objective.
SPREAD_WEIGHT = 0.2
#: Initial temperature as a fraction of the starting makespan.
START_TEMPERATURE = 0.001
#: Probabilities of a repick and of a move (the rest are swaps).
REPICK_SHARE = 0.5
MOVE_SHARE = 0.3

_ATTRIBUTES = {"head_fwd_up": "release", "body_fwd": "fwd", "tail_fwd_bwd": "delay",
               "body_bwd": "bwd", "down_head_bwd": "tail"}


@dataclass
class SearchResult:
    """Best state found by :func:`anneal`.

    Attributes
    ----------
    choice
        Pair index (into ``problem.pairs``) per client.
    helper_of
        Helper index per client.
    orders
        Per helper, its ``(client index, is_backward)`` order.
    makespan
        Latest helper finish of this state (the evaluator's recursion).
    iterations, accepted
        Moves tried and moves accepted.
    """

    choice: np.ndarray
    helper_of: list[int]
    orders: list[list[IndexTask]]
    makespan: float
    iterations: int
    accepted: int


class _PairTable:
    """Stage times of the current pairs in the layout of
    :class:`flsplit.plan.evaluator.StageTable` (``table.fwd[h][k]``), one client
    rewritable at a time."""

    def __init__(self, problem: CutProblem, choice: np.ndarray) -> None:
        self.problem = problem
        clients = np.arange(len(choice))
        for stage, name in _ATTRIBUTES.items():
            setattr(self, name, problem.stages[stage][clients, :, choice].T.tolist())

    def set(self, client: int, pair: int) -> None:
        for stage, name in _ATTRIBUTES.items():
            rows = getattr(self, name)
            for h, value in enumerate(self.problem.stages[stage][client, :, pair].tolist()):
                rows[h][client] = value


def neighbour_pairs(problem: CutProblem) -> list[list[int]]:
    """Per pair index, the candidate pairs whose cuts are each at most one candidate
    position away (by the sorted distinct first and second cuts)."""
    firsts = sorted({int(v) for v in problem.pairs[:, 0]})
    seconds = sorted({int(v) for v in problem.pairs[:, 1]})
    position1 = {c: i for i, c in enumerate(firsts)}
    position2 = {c: i for i, c in enumerate(seconds)}
    index = {(int(a), int(b)): i for i, (a, b) in enumerate(problem.pairs)}
    result = []
    for a, b in problem.pairs:
        i, j = position1[int(a)], position2[int(b)]
        near = []
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di or dj) and 0 <= i + di < len(firsts) and 0 <= j + dj < len(seconds):
                    pair = index.get((firsts[i + di], seconds[j + dj]))
                    if pair is not None:
                        near.append(pair)
        result.append(near)
    return result


class _Annealer:
    """The search state (pairs, helpers, each helper's clients, memory used, finish and
    order) and its moves."""

    def __init__(self, problem: CutProblem, choice: np.ndarray, helper_of: list[int],
                 orders: list[list[IndexTask]] | None, seed: int,
                 spread_weight: float) -> None:
        num_clients, num_helpers, _ = problem.shape
        self.usable = problem.usable()
        self.memory = problem.body_memory
        self.capacity = problem.helper_memory + 1e-9
        self.near = neighbour_pairs(problem)
        self.rng = np.random.default_rng(seed)
        self.weight = spread_weight / num_helpers
        self.choice = np.asarray(choice, dtype=int).copy()
        self.helper_of = [int(h) for h in helper_of]
        self.table = _PairTable(problem, self.choice)
        self.members = [{k for k in range(num_clients) if self.helper_of[k] == h}
                        for h in range(num_helpers)]
        self.used = [float(self.memory[self.choice[sorted(m)]].sum()) for m in self.members]
        self.finish, self.orders = [], []
        for h in range(num_helpers):
            finish, order = self.schedule(h, self.members[h])
            if orders is not None:
                given = helper_finish(self.table, h, orders[h])  # type: ignore[arg-type]
                if given <= finish:
                    finish, order = given, list(orders[h])
            self.finish.append(finish)
            self.orders.append(order)
        self.value = self.objective(self.finish)

    def schedule(self, helper: int, clients: set[int]) -> tuple[float, list[IndexTask]]:
        return best_list_schedule(self.table, helper, sorted(clients))  # type: ignore[arg-type]

    def objective(self, finish: list[float]) -> float:
        return max(finish) + self.weight * sum(finish)

    def pick_pair(self, pair: int, keep: bool) -> int:
        if keep and self.rng.random() < 0.5:
            return pair
        return int(self.rng.choice(self.near[pair])) if self.near[pair] else pair

    def source_helper(self) -> int:
        if self.rng.random() < 0.5:
            return int(np.argmax(self.finish))
        return int(self.rng.integers(len(self.finish)))

    def other_helper(self, helper: int) -> int:
        other = int(self.rng.integers(len(self.finish) - 1))
        return other + (other >= helper)

    def fits(self, client: int, helper: int, pair: int, freed: float) -> bool:
        return bool(self.usable[client, helper, pair]) and (
            self.used[helper] - freed + self.memory[pair] <= self.capacity[helper])

    def propose(self) -> tuple[dict[int, int], dict[int, tuple[int, int]]] | None:
        """A random move as (new helper per moved client, new pair per changed client)."""
        source = self.source_helper()
        if not self.members[source]:
            return None
        client = int(self.rng.choice(sorted(self.members[source])))
        pair = int(self.choice[client])
        draw = self.rng.random()
        if draw < REPICK_SHARE or len(self.finish) == 1:
            new = self.pick_pair(pair, keep=False)
            if new == pair or not self.fits(client, source, new, self.memory[pair]):
                return None
            return {}, {client: (source, new)}
        target = self.other_helper(source)
        new = self.pick_pair(pair, keep=True)
        if draw < REPICK_SHARE + MOVE_SHARE:
            if not self.fits(client, target, new, 0.0):
                return None
            return {client: target}, {client: (target, new)}
        if not self.members[target]:
            return None
        partner = int(self.rng.choice(sorted(self.members[target])))
        partner_pair = int(self.choice[partner])
        partner_new = self.pick_pair(partner_pair, keep=True)
        if not (self.usable[client, target, new] and self.usable[partner, source, partner_new]):
            return None
        if (self.used[source] - self.memory[pair] + self.memory[partner_new]
                > self.capacity[source]
                or self.used[target] - self.memory[partner_pair] + self.memory[new]
                > self.capacity[target]):
            return None
        return ({client: target, partner: source},
                {client: (target, new), partner: (source, partner_new)})

    def step(self, temperature: float) -> bool:
        """Try one move; return whether it was accepted."""
        move = self.propose()
        if move is None:
            return False
        helpers_of, pairs = move
        touched = {self.helper_of[c] for c in pairs} | {h for h, _ in pairs.values()}
        members = {h: set(self.members[h]) for h in touched}
        for client, helper in helpers_of.items():
            members[self.helper_of[client]].discard(client)
            members[helper].add(client)
        for client, (_, pair) in pairs.items():
            self.table.set(client, pair)
        finish = list(self.finish)
        orders = {}
        for helper in touched:
            finish[helper], orders[helper] = self.schedule(helper, members[helper])
        delta = self.objective(finish) - self.value
        if delta > 0 and (temperature <= 0
                          or self.rng.random() >= math.exp(-delta / temperature)):
            for client in pairs:
                self.table.set(client, int(self.choice[client]))
            return False
        for client, (helper, pair) in pairs.items():
            self.used[self.helper_of[client]] -= self.memory[self.choice[client]]
            self.used[helper] += self.memory[pair]
            self.choice[client] = pair
            self.helper_of[client] = helper
        for helper in touched:
            self.members[helper] = members[helper]
            self.orders[helper] = orders[helper]
        self.finish = finish
        self.value += delta
        return True


def anneal(problem: CutProblem, choice: np.ndarray, helper_of: list[int], deadline: float,
           orders: list[list[IndexTask]] | None = None, seed: int = 0,
           spread_weight: float = SPREAD_WEIGHT, start_temperature: float = START_TEMPERATURE,
           max_iterations: int | None = None) -> SearchResult:
    """Search cut pairs and assignment from a feasible start (see the module docstring).

    Parameters
    ----------
    problem
        Stage times per client, helper and candidate pair.
    choice, helper_of
        Start: pair index and helper index per client; must respect memory.
    deadline
        ``time.perf_counter()`` value at which the search stops.
    orders
        Per helper, the start's order; kept where it beats the priority rules' order.
    seed
        Seed of the move generator.
    spread_weight
        Weight of the mean helper finish in the objective.
    start_temperature
        Initial temperature as a fraction of the start's makespan.
    max_iterations
        Stop after this many moves even before the deadline (for reproducible runs).

    Returns
    -------
    SearchResult
        The state with the shortest makespan seen (the start if nothing beat it).
    """
    search = _Annealer(problem, choice, helper_of, orders, seed, spread_weight)
    best = (max(search.finish), search.choice.copy(), list(search.helper_of),
            [list(o) for o in search.orders])
    begin = time.perf_counter()
    span = max(deadline - begin, 1e-9)
    scale = start_temperature * best[0]
    iterations = accepted = 0
    while max_iterations is None or iterations < max_iterations:
        now = time.perf_counter()
        if now >= deadline:
            break
        iterations += 1
        if not search.step(scale * (1.0 - (now - begin) / span)):
            continue
        accepted += 1
        makespan = max(search.finish)
        if makespan < best[0] - 1e-9:
            best = (makespan, search.choice.copy(), list(search.helper_of),
                    [list(o) for o in search.orders])
    makespan, best_choice, best_helpers, best_orders = best
    return SearchResult(best_choice, best_helpers, best_orders, makespan, iterations, accepted)

