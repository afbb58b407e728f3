"""What the server knows about each node's speed, kept up to date from measurements.

The server keeps a profile per node: compute times of the parts it runs, one batch,
smoothed exponentially over rounds. Until a node has been measured its times are the
server's own measurement of the parts scaled by the node's reported compute factor.
Links are modelled as ``latency + bits / rate`` per transfer (:func:`transfer_ms`), from
the link table the server was given (emulated links, or rates the operator knows). A
client's data loading (the time it spends getting each batch from its loader, measured
apart from the stages) is kept as its own per-batch time: the planner adds it to the
client's stage 1 at every cut pair, since it does not depend on where the model is cut.

With :class:`~flsplit.model.costs.CutCosts` (per-segment costs measured once for every
candidate cut pair) a node's times at any cut are the server's times of its parts scaled
by the node's *speed factor*: its reported compute factor at first, then measured /
predicted time of the parts it ran, smoothed exponentially, so a measurement at one cut
carries over to every other cut.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flsplit.config import CodecSetting, parse_codec
from flsplit.model.costs import CutCosts, PartCosts

LinkFn = Callable[[int, int], tuple[float, float]]  # (client, helper) -> (Mbit/s, latency ms)


def transfer_ms(nbytes: float, rate_mbps: float, latency_ms: float) -> float:
    """Time to move ``nbytes`` over a link."""
    seconds = nbytes * 8.0 / (rate_mbps * 1e6) if rate_mbps > 0 else 0.0
    return latency_ms + 1000.0 * seconds


@dataclass
class ClientProfile:
    """Compute times of a client's head and tail (ms per batch) at the default cut, its
    speed factor (times slower than the server), its memory, and the time it takes to
    get a batch from its data loader (ms per batch, at any cut)."""

    head_fwd_ms: float
    head_bwd_ms: float
    tail_ms: float
    measured: bool = False
    start_offset_ms: float = 0.0
    factor: float = 1.0
    memory_mib: float = float("inf")
    load_ms: float = 0.0
    #: the codecs the client reported its data plane uses ("": the run config's)
    activations: str = ""
    gradients: str = ""


@dataclass
class HelperProfile:
    """Compute times of a helper's body tasks (ms per batch) at the default cut, its speed
    factor (times slower than the server) and its memory."""

    body_fwd_ms: float
    body_bwd_ms: float
    memory_mib: float
    measured: bool = False
    factor: float = 1.0


class NodeProfiles:
    """Node profiles that the replies' measurements keep up to date.

    Parameters
    ----------
    costs : PartCosts
        The parts' costs on the server's machine at the default cut.
    link : callable
        ``link(client, helper) -> (rate Mbit/s, latency ms)``; a rate of 0 means free.
    smoothing : float
        Weight of a new measurement in the exponential average (1 = keep only the last).
    cut_costs : CutCosts, optional
        Per-segment costs of the candidate cut pairs, to judge measurements taken at a
        pair other than the default one.
    activations, gradients : CodecSetting, optional
        The codecs of the data plane (run config ``compress-activations``,
        ``compress-gradients``): a link is charged the bytes they send
        (:attr:`~flsplit.config.CodecSetting.byte_ratio` of the raw bytes).

    Raises
    ------
    ValueError
        If ``smoothing`` is not in (0, 1].
    """

    def __init__(
        self,
        costs: PartCosts,
        link: LinkFn,
        smoothing: float = 0.6,
        cut_costs: CutCosts | None = None,
        activations: CodecSetting | None = None,
        gradients: CodecSetting | None = None,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing={smoothing} must be in (0, 1]")
        self.costs = costs
        self.link = link
        self.smoothing = smoothing
        self.cut_costs = cut_costs
        self.activations = activations or CodecSetting()
        self.gradients = gradients or CodecSetting()
        self.clients: dict[int, ClientProfile] = {}
        self.helpers: dict[int, HelperProfile] = {}
        #: Mean batch size over the full batch size per client (a last, smaller batch
        #: per epoch makes it below 1); transfers of a mean batch scale with it.
        self.batch_fill: dict[int, float] = {}

    def add_client(
        self, node: int, compute_factor: float = 1.0, memory_mib: float = float("inf")
    ) -> None:
        """Register a client whose compute is ``compute_factor`` times the server's and
        that has ``memory_mib`` for its head and tail."""
        c = self.costs
        self.clients[node] = ClientProfile(
            c.head_fwd_ms * compute_factor,
            c.head_bwd_ms * compute_factor,
            c.tail_ms * compute_factor,
            factor=compute_factor,
            memory_mib=memory_mib,
        )

    def add_helper(
        self, node: int, compute_factor: float = 1.0, memory_mib: float = float("inf")
    ) -> None:
        """Register a helper whose compute is ``compute_factor`` times the server's."""
        c = self.costs
        self.helpers[node] = HelperProfile(
            c.body_fwd_ms * compute_factor,
            c.body_bwd_ms * compute_factor,
            memory_mib,
            factor=compute_factor,
        )

    def set_codecs(self, node: int, activations: CodecSetting | None,
                   gradients: CodecSetting | None) -> None:
        """The codecs client ``node`` reported its data plane uses (its node config's
        or the run config's; ``None``: the run config's): its links are charged their
        bytes from the next plan on. Helpers' reports are ignored (one-hop plans relay
        nothing)."""
        profile = self.clients.get(node)
        if profile is not None:
            profile.activations = "" if activations is None else str(activations)
            profile.gradients = "" if gradients is None else str(gradients)

    def codecs_of(self, client: int) -> tuple[CodecSetting, CodecSetting]:
        """The codecs of ``client``'s activations and gradients."""
        profile = self.clients.get(client)
        if profile is None:
            return self.activations, self.gradients
        return (parse_codec(profile.activations) if profile.activations else self.activations,
                parse_codec(profile.gradients) if profile.gradients else self.gradients)

    def state_dict(self) -> dict[str, Any]:
        """The node profiles as plain JSON-ready data (for checkpoints)."""
        return {
            "clients": {str(n): asdict(p) for n, p in self.clients.items()},
            "helpers": {str(n): asdict(p) for n, p in self.helpers.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore profiles saved by :meth:`state_dict` (a resumed run)."""
        self.clients = {
            int(n): ClientProfile(**p) for n, p in state.get("clients", {}).items()
        }
        self.helpers = {
            int(n): HelperProfile(**p) for n, p in state.get("helpers", {}).items()
        }

    def mark_provisional(self, node: int) -> None:
        """Let the next measurement of ``node`` replace its profile instead of being
        averaged in (after a warm-up round, say)."""
        profile = self.clients.get(node) or self.helpers.get(node)
        if profile is not None:
            profile.measured = False

    def drop(self, node: int) -> None:
        """Forget a node that failed or left; it is planned out from now on."""
        self.clients.pop(node, None)
        self.helpers.pop(node, None)

    def _blend(self, old: float, new: float, measured: bool) -> float:
        return new if not measured else self.smoothing * new + (1 - self.smoothing) * old

    def _costs_at(self, cuts: str | None) -> PartCosts:
        if cuts is None or self.cut_costs is None or cuts == self.cut_costs.default:
            return self.costs
        return self.cut_costs.part_costs(cuts)

    def cut_transfers_ms(
        self, costs: PartCosts, client: int, rate_mbps: float, latency_ms: float
    ) -> tuple[float, float, float]:
        """A mean batch's transfers of ``client`` over a link at the cuts of ``costs``:
        its activations up at the first cut, their gradients down at the first cut, and
        at the second cut the activations down plus their gradients up, each direction
        charged the bytes its codec sends: the values' (the raw bytes times the batch
        fill and the codec's byte ratio) and those a coded tensor sends whatever its
        batch (``int8``'s scales, where the cut's shapes are known)."""
        fill = self.batch_fill.get(client, 1.0)
        act, grad = self.codecs_of(client)

        def sent(codec: CodecSetting, raw: int, shapes: tuple[tuple[int, ...], ...]) -> float:
            return raw * fill * codec.byte_ratio + sum(codec.fixed_bytes(s) for s in shapes)

        one, two = (costs.cut1_bytes, costs.cut1_shapes), (costs.cut2_bytes, costs.cut2_shapes)
        return (
            transfer_ms(sent(act, *one), rate_mbps, latency_ms),
            transfer_ms(sent(grad, *one), rate_mbps, latency_ms),
            transfer_ms(sent(act, *two), rate_mbps, latency_ms)
            + transfer_ms(sent(grad, *two), rate_mbps, latency_ms),
        )

    def observe_client(
        self,
        node: int,
        helper: int,
        stage1_ms: float,
        stage3_ms: float,
        stage5_ms: float,
        start_offset_ms: float = 0.0,
        cuts: str | None = None,
        load_ms: float = 0.0,
    ) -> None:
        """Update a client's profile from its measured stage means with ``helper`` at the
        cut pair ``cuts`` (default: the default pair), how long after the round's first
        client it started training, and its mean time per batch in its data loader.

        The compute times at the default cut are smoothed as measured (when ``cuts`` is
        the default pair); the speed factor as measured / predicted compute of head and
        tail on the server (when per-segment costs are known); the load time at any cut
        (it is not compute, so it stays out of the speed factor)."""
        profile = self.clients.get(node)
        if profile is None:
            return
        costs = self._costs_at(cuts)
        rate, latency = self.link(node, helper)
        up1, down1, cut2 = self.cut_transfers_ms(costs, node, rate, latency)
        head_fwd = max(stage1_ms - up1, 0.0)
        tail = max(stage3_ms - cut2, 0.0)
        head_bwd = max(stage5_ms - down1, 0.0)
        seen = profile.measured
        profile.start_offset_ms = self._blend(profile.start_offset_ms, start_offset_ms, seen)
        profile.load_ms = self._blend(profile.load_ms, max(load_ms, 0.0), seen)
        if costs is self.costs:
            profile.head_fwd_ms = self._blend(profile.head_fwd_ms, head_fwd, seen)
            profile.tail_ms = self._blend(profile.tail_ms, tail, seen)
            profile.head_bwd_ms = self._blend(profile.head_bwd_ms, head_bwd, seen)
        predicted = costs.head_fwd_ms + costs.tail_ms + costs.head_bwd_ms
        measured = head_fwd + tail + head_bwd
        if predicted > 0 and measured > 0:
            profile.factor = self._blend(profile.factor, measured / predicted, seen)
        profile.measured = True

    def observe_helper(
        self,
        node: int,
        body_fwd_ms: float,
        body_bwd_ms: float,
        served: Mapping[str, int] | None = None,
    ) -> None:
        """Update a helper's profile from its measured task means.

        ``served`` counts the forward tasks the helper ran per cut pair (default: all at
        the default pair); the speed factor becomes measured / predicted body time."""
        profile = self.helpers.get(node)
        if profile is None:
            return
        counts = {cuts: n for cuts, n in (served or {}).items() if n > 0}
        parts = [(self._costs_at(cuts), n) for cuts, n in counts.items()] or [(self.costs, 1)]
        seen = profile.measured
        if all(costs is self.costs for costs, _ in parts):
            profile.body_fwd_ms = self._blend(profile.body_fwd_ms, body_fwd_ms, seen)
            profile.body_bwd_ms = self._blend(profile.body_bwd_ms, body_bwd_ms, seen)
        total = sum(n for _, n in parts)
        predicted = sum(n * (c.body_fwd_ms + c.body_bwd_ms) for c, n in parts) / total
        measured = body_fwd_ms + body_bwd_ms
        if predicted > 0 and measured > 0:
            profile.factor = self._blend(profile.factor, measured / predicted, seen)
        profile.measured = True
