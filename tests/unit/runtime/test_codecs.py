"""Data-plane codecs: spellings, sizes, accuracy, the checks of a coded frame, error
feedback, and a client and helper that talk compressed over gRPC."""

import copy
import itertools
import json
import math
import struct
import time

import pytest
import torch
from flwr.app import Context, RecordDict
from torch import nn

from flsplit.client.node import node_codecs
from flsplit.config import RunConfig, parse_codec
from flsplit.model.splitting import split_model
from flsplit.model.zoo import SmallCNN
from flsplit.protocol import BYTES_DOWN, BYTES_UP, ClientResult
from flsplit.runtime import codecs, wire
from flsplit.runtime.auth import TokenVerifier, helper_key, new_run_secret, sign_token
from flsplit.runtime.dataplane import HelperServer
from flsplit.runtime.emulation import NO_EMULATION, Emulation
from flsplit.runtime.helper_client import HelperClient
from flsplit.runtime.trainer import train_split
from flsplit.runtime.worker import HelperWorker, TensorSpec

LOSSY = ["fp16", "bf16", "int8", "topk:0.1", "randtopk:0.1", "utopk:0.1", "int8+ef",
         "topk:0.1+ef"]


def _roundtrip(tensor, spelling):
    codec = parse_codec(spelling)
    coded = codecs.Feedback().code(tensor, codec, "k")
    data = wire.encode(wire.Frame("fwd", "c", "t", 1, coded, codec=codec))
    return wire.decode(data), data


# -- spellings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "fraction", "feedback"),
    [("none", "none", 1.0, False), ("FP16", "fp16", 1.0, False), ("int8+ef", "int8", 1.0, True),
     ("topk:0.1", "topk", 0.1, False), ("randtopk:0.25+ef", "randtopk", 0.25, True),
     ("utopk:0.1", "utopk", 0.1, False)],
)
def test_codec_spellings_are_read(text, name, fraction, feedback):
    codec = parse_codec(text)
    assert (codec.name, codec.fraction, codec.feedback) == (name, fraction, feedback)
    assert parse_codec(str(codec)) == codec


@pytest.mark.parametrize(
    ("text", "message"),
    [("zip", "is not one of"), ("topk", "needs the fraction"), ("topk:0", "(0, 1]"),
     ("int8:0.5", "only topk, randtopk and utopk"), ("none+ef", "loses nothing"),
     ("int8+fb", "only '+ef'")],
)
def test_bad_codec_spellings_are_refused_naming_the_key(text, message):
    with pytest.raises(ValueError, match="compress-gradients") as err:
        RunConfig.parse({"compress-gradients": text})
    assert message in str(err.value)


def test_the_run_config_defaults_to_raw_tensors_and_a_client_node_may_override():
    config = RunConfig.parse({"compress-activations": "int8"})
    assert RunConfig.parse().compress_activations.lossless
    assert RunConfig.parse().compress_gradients.lossless
    context = Context(1, 1, {"compress-gradients": "topk:0.2+ef"}, RecordDict(), {})
    activations, gradients = node_codecs(context, config)
    assert activations == parse_codec("int8") and gradients == parse_codec("topk:0.2+ef")
    with pytest.raises(ValueError, match="node config: compress-activations"):
        node_codecs(Context(1, 1, {"compress-activations": "x"}, RecordDict(), {}), config)


# -- sizes and accuracy ----------------------------------------------------------------


@pytest.mark.parametrize(("spelling", "ratio"), [("fp16", 2.0), ("bf16", 2.0), ("int8", 3.8),
                                                 ("topk:0.1", 4.9), ("randtopk:0.1", 4.9),
                                                 ("utopk:0.1", 4.9)])
def test_a_resnet_sized_activation_travels_in_fewer_bytes(spelling, ratio):
    x = torch.randn(32, 64, 16, 16)
    raw = len(wire.encode(wire.Frame("fwd", "c", "t", 1, x)))
    frame, data = _roundtrip(x, spelling)
    assert raw / len(data) >= ratio * 0.999
    assert codecs.wire_nbytes(x, parse_codec(spelling)) <= len(data)
    assert frame.tensor.shape == x.shape and frame.tensor.dtype == x.dtype


def test_lossy_codecs_stay_close_and_topk_keeps_the_largest_entries():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5) * torch.arange(1, 5).reshape(1, 4, 1, 1)  # channels differ
    for spelling, tolerance in (("fp16", 1e-2), ("bf16", 5e-2)):
        error = (_roundtrip(x, spelling)[0].tensor - x).abs().max().item()
        assert error < tolerance, spelling
    # int8: within half a step of each channel's own range
    error = (_roundtrip(x, "int8")[0].tensor - x).abs().amax(dim=(0, 2, 3))
    step = (x.amax(dim=(0, 2, 3)) - x.amin(dim=(0, 2, 3))) / 255
    assert bool((error <= step / 2 * 1.001).all())
    top = _roundtrip(x, "topk:0.1")[0].tensor
    kept = top != 0
    assert kept.sum().item() == round(0.1 * x.numel())
    assert torch.equal(top[kept], x[kept])
    assert x[kept].abs().min() >= x[~kept].abs().max()


def test_utopk_sends_the_entries_above_its_threshold_exactly_and_the_others_as_plus_minus_it():
    torch.manual_seed(0)
    x = torch.randn(16, 64) * torch.rand(16, 1) * 3  # rows of different scales
    x[:, ::3] = 0.0  # ReLU-like zeros are never sent
    frame, _ = _roundtrip(x, "utopk:0.1")
    got = frame.tensor
    assert codecs.encode(x, parse_codec("utopk:0.1"))[0].spec["codec"] == "topk"
    kept = got != 0
    k = round(0.1 * x.numel())
    assert kept.sum().item() == k and not bool(kept[:, ::3].any())
    assert codecs.wire_nbytes(x, parse_codec("utopk:0.1")) == k * 8
    exact = got[kept] == x[kept]
    threshold = got[kept][~exact].abs()
    assert threshold.numel() > 0 and torch.allclose(threshold, threshold[:1].expand_as(threshold))
    assert torch.equal(got[kept][~exact].sign(), x[kept][~exact].sign())
    t = threshold[0]
    assert bool((x[kept][exact].abs() >= t * (1 - 1e-6)).all())
    assert bool((x[kept][~exact].abs() <= t * (1 + 1e-6)).all())


def test_utopk_decodes_to_the_tensor_on_average_where_topk_shrinks_it():
    # an unbiased sparsifier: the mean of many codings approaches the tensor; top-k
    # drops the small entries every time (what makes it a poor gradient code)
    torch.manual_seed(1)
    x = torch.randn(8, 32).abs() * torch.linspace(0.1, 2.0, 32)
    coder, codec, draws = codecs.Feedback(seed=3), parse_codec("utopk:0.1"), 2000
    mean = torch.zeros_like(x)
    for _ in range(draws):
        coded = coder.code(x, codec, "g")
        mean += _decode_coded(coded) / draws
    assert (mean - x).abs().max().item() < 0.05 * x.max().item()
    assert abs(mean.sum().item() - x.sum().item()) < 0.01 * x.sum().item()
    top = _roundtrip(x, "topk:0.1")[0].tensor
    assert top.sum().item() < 0.5 * x.sum().item()


def test_utopk_draws_are_reproducible_from_the_coder_seed():
    x = torch.randn(4, 50)
    codec = parse_codec("utopk:0.2")
    first = codecs.Feedback(seed=7).code(x, codec, "k").payload
    assert codecs.Feedback(seed=7).code(x, codec, "k").payload == first
    assert codecs.Feedback(seed=8).code(x, codec, "k").payload != first


def _decode_coded(coded):
    dtype, shape, _, coding = codecs.check_coded_spec(coded.spec)
    return codecs.decode(coding, dtype, shape, memoryview(coded.payload))


def test_int8_has_a_scale_and_zero_point_per_channel_dim_1_of_4d_last_dim_otherwise():
    assert _roundtrip(torch.randn(2, 3, 4, 5), "int8")[0] is not None
    for shape, channels in (((2, 3, 4, 5), 3), ((6, 7), 7), ((2, 3, 9), 9), ((5,), 1), ((), 1)):
        coded, _ = codecs.encode(torch.randn(shape), parse_codec("int8"))
        assert coded.spec["channels"] == channels
        assert coded.spec["nbytes"] == 8 * channels + math.prod(shape)
    constant = torch.full((2, 3, 2, 2), 7.25)
    assert torch.equal(_roundtrip(constant, "int8")[0].tensor, constant)


def test_fp16_clamps_what_float16_cannot_hold_instead_of_sending_infinity():
    x = torch.tensor([1e6, -1e6, 1.0])
    assert _roundtrip(x, "fp16")[0].tensor.tolist() == [65504.0, -65504.0, 1.0]


def test_none_is_the_old_frame_byte_for_byte_and_other_dtypes_travel_raw():
    x = torch.randn(4, 3)
    plain = wire.encode(wire.Frame("fwd", "c", "t", 1, x))
    assert wire.encode(wire.Frame("fwd", "c", "t", 1, x, codec=codecs.NONE)) == plain
    ids = torch.arange(6).reshape(2, 3)
    frame, _ = _roundtrip(ids, "int8")
    assert torch.equal(frame.tensor, ids) and frame.codec == parse_codec("int8")


def test_a_tuple_codes_its_hidden_state_and_leaves_masks_and_ids_raw():
    hidden = torch.randn(4, 16, requires_grad=True)
    mask, ids = torch.ones(4, dtype=torch.bool), torch.arange(4)
    tensors = (hidden * 2, mask, ids)
    grads = (True, False, False)
    coded = codecs.Feedback().code_all(tensors, parse_codec("fp16"), ("fwd", 0), grads)
    assert isinstance(coded[0], codecs.Coded) and coded[1] is mask and coded[2] is ids
    frame = wire.decode(wire.encode(wire.Frame("fwd", "c", "t", 1, coded, grads=grads)))
    assert frame.grads == grads
    torch.testing.assert_close(frame.tensor[0], (hidden * 2).detach(), atol=1e-2, rtol=1e-2)


# -- validation ------------------------------------------------------------------------


def _edited(spelling, edit_spec=None, edit_payload=None, shape=(4, 6)):
    coded, _ = codecs.encode(torch.randn(shape), parse_codec(spelling))
    spec, payload = dict(coded.spec), bytearray(coded.payload)
    if edit_spec:
        edit_spec(spec)
    if edit_payload:
        edit_payload(payload)
    header = json.dumps({"op": "fwd", "client": "c", "token": "t", "step": 1, "tensor": spec})
    return struct.pack("<4sI", wire.MAGIC, len(header)) + header.encode() + bytes(payload)


@pytest.mark.parametrize(
    ("spelling", "edit_spec", "edit_payload", "message"),
    [
        ("int8", lambda s: s.update(codec="zip"), None, "codec 'zip' is not one of"),
        ("int8", lambda s: s.update(dtype="int64"), None, "codecs code float32 and float64"),
        ("int8", lambda s: s.update(channels=4), None, "int8 channels 4 does not match"),
        ("int8", lambda s: s.update(nbytes=s["nbytes"] - 1), None, "does not match codec int8"),
        ("int8", None, lambda p: p.__setitem__(slice(0, 4), struct.pack("<f", 0.0)),
         "scales must be finite and positive"),
        ("int8", None, lambda p: p.__setitem__(slice(0, 4), struct.pack("<f", -1.0)),
         "scales must be finite and positive"),
        ("int8", None, lambda p: p.__setitem__(slice(24, 28), struct.pack("<f", math.nan)),
         "zero points must be finite"),
        ("topk:0.25", lambda s: s.update(k=25), None, "topk k 25 is not in [0, 24]"),
        ("topk:0.25", lambda s: s.update(index="int16"), None, "index 'int16' is not int32"),
        ("topk:0.25", None, lambda p: p.__setitem__(slice(0, 4), struct.pack("<i", 24)),
         "topk index outside [0, 24)"),
        ("topk:0.25", None, lambda p: p.__setitem__(slice(0, 4), struct.pack("<i", -1)),
         "topk index outside [0, 24)"),
        ("topk:0.25", None, lambda p: p.__setitem__(slice(24, 28), struct.pack("<f", math.inf)),
         "topk values hold NaN"),
        ("fp16", lambda s: s.update(shape=[2**20, 2**20], nbytes=2**41), None,
         "more than the frame limit"),
        ("fp16", None, lambda p: p.__setitem__(slice(0, 2), b"\x00\x7c"), "NaN or infinite"),
    ],
)
def test_a_coded_frame_is_checked_before_it_is_used(spelling, edit_spec, edit_payload, message):
    with pytest.raises(wire.FrameError) as err:
        wire.decode(_edited(spelling, edit_spec, edit_payload))
    assert message in str(err.value)


def test_a_bad_codec_header_field_is_refused():
    x = torch.randn(2, 2)
    data = wire.encode(wire.Frame("fwd", "c", "t", 1, x, codec=parse_codec("int8")))
    with pytest.raises(wire.FrameError, match="header field codec"):
        wire.decode(data.replace(b'"codec":"int8"', b'"codec":"zip8"'))


# -- error feedback --------------------------------------------------------------------


def test_error_feedback_sends_what_was_lost_later_and_restarts_on_a_new_shape():
    torch.manual_seed(0)
    x = torch.randn(1000)
    codec = parse_codec("topk:0.05+ef")
    coder = codecs.Feedback()
    sent = torch.zeros_like(x)
    for _ in range(100):  # the same tensor, again and again: its sum gets through
        sent += wire.decode(wire.encode(wire.Frame("bwd", "c", "t", 1,
                                                   coder.code(x, codec, "k")))).tensor
    without = codecs.Feedback()
    plain = sum(wire.decode(wire.encode(wire.Frame(
        "bwd", "c", "t", 1, without.code(x, parse_codec("topk:0.05"), "k")))).tensor
        for _ in range(100))
    assert (sent - 100 * x).norm() < 0.2 * (plain - 100 * x).norm()
    # a smaller last batch: no residual of another shape is added
    small = torch.randn(10)
    first = codecs.encode(small, codec)[0]
    assert coder.code(small, codec, "k").payload == first.payload


# -- over gRPC -------------------------------------------------------------------------

SECRET = new_run_secret()
RUN, ROUND, HELPER = 5, 2, 100
KEY = helper_key(SECRET, RUN, HELPER)


class _RecordingLink(Emulation):
    """An emulated link that records the bytes it is charged instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(rate_mbps=1.0)
        object.__setattr__(self, "charged", [])

    def transfer(self, nbytes: int) -> None:
        self.charged.append(nbytes)


def _train(codec_pair, batches=3, emulation=None):
    torch.manual_seed(0)
    model = SmallCNN()
    split = split_model(model, ("conv2", "fc2"), torch.zeros(2, 1, 8, 8))
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(batches)]
    worker = HelperWorker.replicated(
        split.body, ["1"], lambda p: torch.optim.SGD(p, lr=0.1),
        input_spec=TensorSpec((16, 8, 8), torch.float32),
    )
    server = HelperServer(worker, TokenVerifier(KEY, RUN, ROUND, HELPER, ["1"])).start()
    token = sign_token(KEY, RUN, ROUND, "1", HELPER)
    try:
        optimizer = torch.optim.SGD(
            itertools.chain(split.head.parameters(), split.tail.parameters()), lr=0.1
        )
        with HelperClient(server.address, "1", token, deadline=30, codecs=codec_pair) as helper:
            result = train_split(split.head, split.tail, helper, copy.deepcopy(data),
                                 nn.functional.cross_entropy, optimizer,
                                 emulation=emulation or NO_EMULATION)
            moved = helper.bytes_up, helper.bytes_down
        assert server.wait_clients(10)
    finally:
        server.stop()
    return result, moved, split.head.state_dict()


def test_a_client_and_helper_train_compressed_and_count_the_bytes():
    raw, raw_bytes, raw_head = _train(None)
    int8 = parse_codec("int8")
    coded, coded_bytes, coded_head = _train((int8, int8))
    # activations and gradients of both cuts travel coded, in both directions
    assert coded_bytes[0] < raw_bytes[0] / 3 and coded_bytes[1] < raw_bytes[1] / 3
    assert raw_bytes[0] > 16 * 16 * 8 * 8 * 4 * 3  # 3 forward activations at least
    assert coded.batches == raw.batches == 3
    assert abs(coded.loss - raw.loss) < 0.05
    for key, value in raw_head.items():
        torch.testing.assert_close(coded_head[key], value, atol=1e-2, rtol=0, msg=key)
        assert not torch.equal(coded_head[key], value)  # the gradients did travel coded
    metrics = ClientResult(examples=1, bytes_up=coded_bytes[0], bytes_down=coded_bytes[1])
    record = metrics.to_metrics()
    assert record[BYTES_UP] == coded_bytes[0] and record[BYTES_DOWN] == coded_bytes[1]
    assert ClientResult.from_metrics(record).bytes_up == coded_bytes[0]
    assert BYTES_UP not in ClientResult.app_metrics(record)


def test_an_emulated_link_charges_the_coded_bytes():
    raw, coded = _RecordingLink(), _RecordingLink()
    _train(None, batches=1, emulation=raw)
    int8 = parse_codec("int8")
    _train((int8, int8), batches=1, emulation=coded)
    activation = 16 * 16 * 8 * 8  # the cut-1 activation's values (float32 raw)
    assert raw.charged[0] == 4 * activation
    assert coded.charged[0] == activation + 8 * 16  # a byte a value, 16 channels
    assert len(coded.charged) == 4 and all(
        c < r / 2 for c, r in zip(coded.charged, raw.charged, strict=True)
    )


def _slow_coding_call(monkeypatch, side):
    """One int8 forward and backward whose coder on ``side`` (``client`` or ``helper``)
    takes 5 s on a clock the test moves; the client's (network, service) seconds."""
    torch.manual_seed(0)
    split = split_model(SmallCNN(), ("conv2", "fc2"), torch.zeros(2, 1, 8, 8))
    worker = HelperWorker.replicated(
        split.body, ["1"], lambda p: torch.optim.SGD(p, lr=0.1),
        input_spec=TensorSpec((16, 8, 8), torch.float32),
    )
    server = HelperServer(worker, TokenVerifier(KEY, RUN, ROUND, HELPER, ["1"])).start()
    token = sign_token(KEY, RUN, ROUND, "1", HELPER)
    real = time.perf_counter
    moved = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + moved[0])
    int8 = parse_codec("int8")
    times = []
    try:
        with HelperClient(server.address, "1", token, deadline=30, codecs=(int8, int8)) as helper:
            helper.connect()
            coder = helper._coder if side == "client" else server.coder
            code_all = coder.code_all

            def slow_code_all(*args, **kwargs):
                moved[0] += 5.0
                return code_all(*args, **kwargs)

            monkeypatch.setattr(coder, "code_all", slow_code_all)
            out = helper.forward(split.head(torch.randn(4, 1, 8, 8)).detach())
            times.append((helper.last_network_seconds, helper.last_service_seconds))
            helper.backward(torch.ones_like(out))
            times.append((helper.last_network_seconds, helper.last_service_seconds))
            helper.finish()
        assert server.wait_clients(10)
    finally:
        server.stop()
    return times


@pytest.mark.parametrize("side", ["client", "helper"])
def test_coding_counts_to_the_call_s_network_time_not_to_the_helper_s_service(
    monkeypatch, side
):
    # Coding a tensor is part of sending it, on either end: the stage times the planner
    # learns must hold it (the helper's service is its queue and compute, which the plan
    # models as the helper's task). A coder that takes 5 s shows in the network time.
    for network, service in _slow_coding_call(monkeypatch, side):
        assert network >= 5.0
        assert service < 5.0
