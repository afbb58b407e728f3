"""A helper's relay to the next helper of a client's chain.

A client's body may be split over a chain of helpers ``client -> h1 -> h2 -> ... ->
client``. A helper that is not the last of a client's chain holds a
:class:`~flsplit.runtime.helper_client.HelperClient` for the next hop, presenting the
client's id and the client's round token *for the next helper*. ``Forward``: the helper's
own output goes on to the next hop and the next hop's answer is the chain's output.
``Backward``: the gradient is checked against the shape and dtype of that answer and
relayed first; what the next hop answers is the gradient of this helper's output.
``Finish`` is relayed too, and so is a client's abort (or its drop as idle).

Each client's hop to its next helper may be an emulated link (``links``: the rate and
latency the server sends, run config ``helper-link-mbps`` / ``helper-link-latency-ms``).
It charges what the chain planner charges that link (docs/multihop.md): this helper's
output going on (forward) and the gradient of it coming back (backward), one transfer
at a time per client and direction. The chain's output, which the next hop's forward
answer carries back along the chain, and its gradient going out are the client's own
link's (the client charges them, as the planner charges them to the last helper's link
to the client), not charged again on every helper link they pass.

A chain carries one tensor per cut: a cut that several tensors cross (a tuple,
:mod:`flsplit.model.crossing`) is refused with the reason (:func:`multi_tensor_chain`),
whether it reaches a relaying helper or leaves one.

Failures are raised as the worker's errors so that the server answers them like its own:
:class:`~flsplit.runtime.checks.InputError` for a gradient that does not fit,
:class:`~flsplit.runtime.worker.TaskError` for a backward without a relayed forward, and
:class:`RelayError` (a ``TaskError``) naming the failing next hop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import torch

from flsplit.config import CodecSetting
from flsplit.runtime.checks import check_gradient
from flsplit.runtime.codecs import NONE, wire_nbytes
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import DataPlaneError, HelperClient
from flsplit.runtime.worker import TaskError


class RelayError(TaskError):
    """The next hop refused or failed a relayed request; the message starts with
    ``next hop:``."""


def multi_tensor_chain(tensors: tuple[torch.Tensor, ...]) -> str:
    """Why a chain refuses a cut that ``tensors`` cross."""
    return (
        f"the cut carries {len(tensors)} tensors; helper chains carry one tensor per cut; "
        "use chain-length 1 (or cuts that one tensor crosses)"
    )


class ChainRelay:
    """The next hops of the clients whose chain goes on after this helper.

    Parameters
    ----------
    next_hops : Mapping[str, HelperClient]
        Per client: the connection to the next helper of its chain.
    link : Emulation
        Emulated link to the next hop of a client that ``links`` leaves out.
    links : Mapping[str, Emulation], optional
        Per client: the emulated link to its next hop.
    sleep : callable
        How an emulated transfer waits (``time.sleep``; tests pass a recorder).
    """

    def __init__(
        self,
        next_hops: Mapping[str, HelperClient],
        link: Emulation = NO_EMULATION,
        links: Mapping[str, Emulation] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.next_hops = dict(next_hops)
        self.link = link
        self.links = dict(links or {})
        self._sleep = sleep
        # a client's link carries one transfer at a time in each direction; clients have
        # their own links (as the planner models them)
        self._link_locks = {
            (client, way): threading.Lock() for client in self.next_hops for way in (0, 1)
        }
        self._lock = threading.Lock()
        # (client, micro) -> shape and dtype of the next hop's forward answer
        self._relayed: dict[tuple[str, int], tuple[tuple[int, ...], torch.dtype]] = {}

    def relays(self, client: str) -> bool:
        """Whether ``client``'s chain goes on after this helper."""
        return client in self.next_hops

    def forward(
        self,
        client: str,
        output: torch.Tensor,
        step: int,
        micro: int = 0,
        micros: int = 1,
        codec: CodecSetting | None = None,
    ) -> torch.Tensor:
        """Send this piece's output on to the next hop; return the chain's output.

        Raises
        ------
        RelayError
            The next hop failed or answered without a tensor.
        """
        if isinstance(output, tuple):
            raise RelayError(multi_tensor_chain(output))
        answer = self._call_next(client, "fwd", output, step, micro, micros, codec)
        if isinstance(answer, tuple):
            raise RelayError(f"next hop: {multi_tensor_chain(answer)}")
        with self._lock:
            self._relayed[(client, micro)] = (tuple(answer.shape), answer.dtype)
        return answer

    def backward(
        self,
        client: str,
        grad: torch.Tensor,
        step: int,
        micro: int = 0,
        micros: int = 1,
        codec: CodecSetting | None = None,
    ) -> torch.Tensor:
        """Check the gradient against the chain's output and send it to the next hop;
        return the gradient of this piece's output.

        Raises
        ------
        TaskError
            No forward of this micro-batch was relayed.
        InputError
            The gradient does not fit the chain's output (checked before it is sent).
        RelayError
            The next hop failed or answered without a tensor.
        """
        with self._lock:
            expected = self._relayed.get((client, micro))
        if expected is None:
            raise TaskError("backward task without a preceding forward task")
        shape, dtype = expected
        check_gradient(grad, shape, dtype)
        answer = self._call_next(client, "bwd", grad, step, micro, micros, codec)
        with self._lock:
            self._relayed.pop((client, micro), None)
        return answer

    def finish(self, client: str, step: int) -> None:
        """Tell the next hop the client is done for the round.

        Raises
        ------
        RelayError
            The next hop failed.
        """
        try:
            self.next_hops[client].call("finish", None, step)
        except DataPlaneError as err:
            raise RelayError(f"next hop: {err}") from None

    def abort(self, client: str, reason: str) -> None:
        """Tell the next hop the client gave up its round (best effort, never raises)."""
        hop = self.next_hops.get(client)
        if hop is not None:
            hop.abort(reason)

    def close(self) -> None:
        """Close the connections to the next hops."""
        for hop in self.next_hops.values():
            hop.close()

    def transfer_seconds(self, client: str, nbytes: int) -> float:
        """Emulated seconds ``nbytes`` take on ``client``'s link to its next hop."""
        return self.links.get(client, self.link).transfer_seconds(nbytes)

    def _transfer(self, client: str, way: int, tensor: torch.Tensor,
                  codec: CodecSetting) -> None:
        """Wait out the emulated transfer of ``tensor`` (coded) on ``client``'s link in
        direction ``way`` (0: to the next hop, 1: back)."""
        seconds = self.transfer_seconds(client, wire_nbytes(tensor, codec))
        if seconds > 0:
            with self._link_locks[(client, way)]:
                self._sleep(seconds)

    def _call_next(
        self,
        client: str,
        op: str,
        tensor: torch.Tensor,
        step: int,
        micro: int,
        micros: int,
        codec: CodecSetting | None = None,
    ) -> torch.Tensor:
        """Send ``tensor`` to the next hop as task ``op``, coded with the hop connection's
        own codec of ``op`` if it has one (the helper's node config), else ``codec`` (the
        client's; default raw); return its answer. The emulated link charges the tensor
        at this helper's cut: the output sent on a forward, the gradient answered to a
        backward."""
        hop = self.next_hops[client]
        # the hop's own codec (the helper's node config) wins over the client's
        codec = getattr(hop, "codecs", {}).get(op, codec or NONE)
        if op == "fwd":  # this helper's output crosses the link
            self._transfer(client, 0, tensor, codec)
        try:
            answer, _, _ = hop.call(op, tensor, step, micro, micros, codec=codec)
        except DataPlaneError as err:
            raise RelayError(f"next hop: {err}") from None
        if answer is None:
            raise RelayError(
                f"next hop answered {'Forward' if op == 'fwd' else 'Backward'} without a tensor"
            )
        if op == "bwd":  # the gradient of this helper's output crosses it back
            self._transfer(client, 1, answer, codec)
        return answer
