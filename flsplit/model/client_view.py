"""The full model as a client's own training function sees it.

:class:`ClientModel` is an ``nn.Module`` that holds the client's head and tail and
reaches the body through a function (on a helper, :mod:`flsplit.runtime.remote_body`).
To the user's code it looks like the model it would train unsplit:

- ``forward`` runs head, body and tail; ``loss.backward()`` flows through the body.
  ``net(x)`` gives the head ``x``; ``net(input_ids=..., attention_mask=...)`` (or
  ``net(**batch)``) gives it the mapping of those keyword arguments. When several tensors
  cross a cut, the body takes and returns tuples and the tail is called ``tail(*out)``
  (:mod:`flsplit.model.crossing`).
- Its submodules, ``parameters()``, ``named_parameters()``, ``state_dict()`` and
  ``load_state_dict()`` are those of the parts held here, under the full model's names
  (``net.fc2`` is the tail's ``fc2``; ``state_dict`` keys are the full model's), so an
  optimizer over ``net.parameters()`` trains head and tail and code that saves or restores
  a layer by name keeps working. A layer that runs on the helper is named in the
  ``AttributeError`` of code that reaches for it.
- ``.to(device)``, ``.train()``, ``.eval()``, ``.double()``, ... apply to head and tail.

The parts' modules are shared, not copied: training the view trains the parts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from flsplit.model.crossing import Activation, call_part

BodyFn = Callable[[Activation], Activation]


class ClientModel(nn.Module):
    """Head and tail here, the body behind ``body``.

    Parameters
    ----------
    head, tail : nn.Module
        The client's parts (their ``state_dict`` keys are the full model's).
    body : callable
        ``body(cut1) -> cut2`` (tensors or tuples of tensors), differentiable with respect
        to ``cut1``'s tensors that need a gradient.
    body_modules : iterable of str
        Names of the modules that run elsewhere, for error messages.
    model_type : type, optional
        The class of the model that was split, for error messages about its other methods.
    """

    def __init__(
        self,
        head: nn.Module,
        tail: nn.Module,
        body: BodyFn,
        body_modules: Iterable[str] = (),
        model_type: type | None = None,
    ) -> None:
        super().__init__()
        # kept out of the module tree: the tree holds the parts' own submodules instead,
        # so names and state_dict keys are the full model's, not "head." / "tail."
        object.__setattr__(self, "_parts", (head, tail))
        object.__setattr__(self, "_body", body)
        object.__setattr__(self, "_body_modules", frozenset(body_modules))
        object.__setattr__(self, "_model_type", model_type)
        _merge(self, (head, tail))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run head, body and tail: ``net(inputs)`` or ``net(**named_inputs)``.

        Raises
        ------
        TypeError
            For several positional arguments, or positional and keyword ones together:
            the head takes one input (a tensor, or a mapping of named tensors).
        """
        if kwargs and not args:
            inputs: Any = kwargs
        elif len(args) == 1 and not kwargs:
            inputs = args[0]
        else:
            raise TypeError(
                f"the split model takes one input or keyword inputs only, got {len(args)} "
                f"positional and {len(kwargs)} keyword arguments; pass net(x) or "
                "net(**inputs)"
            )
        head, tail = self._parts
        return call_part(tail, self._body(head(inputs)))

    def train(self, mode: bool = True) -> ClientModel:
        """Set training mode on the view and both parts."""
        super().train(mode)
        for part in self._parts:
            part.train(mode)
        return self

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # .to(), .double(), .cuda() ...: convert the parts themselves (their graphs read
        # their own attributes), then rebuild the view over what they now hold
        for part in self._parts:
            part._apply(fn, recurse)
        self._parameters.clear()
        self._buffers.clear()
        self._modules.clear()
        self._non_persistent_buffers_set.clear()
        _merge(self, self._parts)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ClientModel:
        # the parts are copied; the way to the body is not (it is a connection)
        head, tail = (copy.deepcopy(part, memo) for part in self._parts)
        clone = ClientModel(head, tail, self._body, self._body_modules, self._model_type)
        clone.train(self.training)
        return clone

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in self.__dict__.get("_body_modules", ()):
                raise AttributeError(
                    f"{name!r} runs on the helper (it is part of the body), so the client's "
                    "model has no such attribute; choose cuts that keep it in the head or "
                    "tail if the client must reach it"
                ) from None
            model_type = self.__dict__.get("_model_type")
            if model_type is not None and hasattr(model_type, name):
                raise AttributeError(
                    f"{model_type.__name__}.{name} is not part of the split model: it runs "
                    f"{model_type.__name__}.forward only, traced and cut at the cuts; call "
                    "the model itself (net(inputs)) in the training function"
                ) from None
            raise


def _merge(target: nn.Module, sources: Iterable[nn.Module]) -> None:
    """Register the parameters, buffers and submodules of ``sources`` on ``target`` by
    name; a submodule present in several sources (a block cut through) becomes a
    container of their merged contents."""
    children: dict[str, list[nn.Module]] = {}
    for source in sources:
        for name, param in source._parameters.items():
            if param is not None:
                target._parameters[name] = param
        for name, buffer in source._buffers.items():
            if buffer is not None:
                target._buffers[name] = buffer
                if name in source._non_persistent_buffers_set:
                    target._non_persistent_buffers_set.add(name)
        for name, child in source._modules.items():
            if child is not None:
                children.setdefault(name, []).append(child)
    for name, modules in children.items():
        if len(modules) == 1:
            target._modules[name] = modules[0]
        else:
            container = nn.Module()
            _merge(container, modules)
            target._modules[name] = container
