"""A helper's steady task times: each client's first task of a kind is left out."""

import pytest

from flsplit.protocol import TaskSpan
from flsplit.server.steady import steady_busy_ms, steady_kind_ms


def _timeline(first_ms: float, rest_ms: float, tasks: int = 4) -> list[TaskSpan]:
    """Two clients, each ``tasks`` forwards and backwards; their first of each kind takes
    ``first_ms``, the others ``rest_ms``, with waits between them."""
    spans, clock = [], 100.0
    for i in range(tasks):
        for client in ("3", "4"):
            for kind in ("fwd", "bwd"):
                ms = first_ms if i == 0 else rest_ms
                spans.append(TaskSpan(client, kind, clock, clock + ms / 1000))
                clock += ms / 1000 + 0.25
    return spans


def test_a_first_task_slowed_by_one_off_costs_is_not_the_helpers_steady_time():
    assert steady_kind_ms(_timeline(700.0, 6.0)) == pytest.approx({"fwd": 6.0, "bwd": 6.0})
    assert steady_kind_ms(_timeline(700.0, 6.0)) == pytest.approx(
        steady_kind_ms(_timeline(6.0, 6.0)))


def test_busy_time_per_client_counts_every_task_at_its_steady_time():
    assert steady_busy_ms(_timeline(700.0, 6.0)) == pytest.approx({3: 48.0, 4: 48.0})


def test_a_client_with_one_task_of_a_kind_keeps_it():
    spans = [TaskSpan("5", "fwd", 0.0, 0.010), TaskSpan("5", "bwd", 1.0, 1.030)]
    assert steady_kind_ms(spans) == pytest.approx({"fwd": 10.0, "bwd": 30.0})
    assert steady_busy_ms(spans) == pytest.approx({5: 40.0})
