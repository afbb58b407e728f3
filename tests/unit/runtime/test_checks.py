"""The tensor checks the worker, the chain relay and the synchronous-step worker share:
the messages are quoted in the README and by clients, so they are pinned here."""

import pytest
import torch

from flsplit.runtime.checks import InputError, TensorSpec, check_gradient


def test_an_input_of_the_wrong_shape_or_dtype_is_named():
    spec = TensorSpec((16, 8, 8), torch.float32)
    spec.check(torch.zeros(3, 16, 8, 8))
    with pytest.raises(InputError) as shape:
        spec.check(torch.zeros(4, 3, 2))
    assert str(shape.value) == (
        "tensor shape (4, 3, 2) does not fit the body input (batch, 16, 8, 8)"
    )
    with pytest.raises(InputError) as dtype:
        spec.check(torch.zeros(3, 16, 8, 8, dtype=torch.float64))
    assert str(dtype.value) == "tensor dtype torch.float64 is not the body input's torch.float32"


def test_a_gradient_is_checked_for_shape_first_then_dtype():
    check_gradient(torch.zeros(2, 5), (2, 5), torch.float32)
    with pytest.raises(InputError) as shape:  # both wrong: the shape is named
        check_gradient(torch.zeros(2, 4, dtype=torch.float64), (2, 5), torch.float32)
    assert str(shape.value) == (
        "tensor shape (2, 4) of the gradient does not match the body output shape (2, 5)"
    )
    with pytest.raises(InputError) as dtype:
        check_gradient(torch.zeros(2, 5, dtype=torch.float64), torch.Size([2, 5]), torch.float32)
    assert str(dtype.value) == (
        "tensor dtype torch.float64 of the gradient is not the body output's torch.float32"
    )
    with pytest.raises(InputError) as rows:
        check_gradient(
            torch.zeros(3, 5), (2, 5), torch.float32,
            expected="the client's rows of the body output",
        )
    assert str(rows.value) == (
        "tensor shape (3, 5) of the gradient does not match the client's rows of the body "
        "output (2, 5)"
    )
