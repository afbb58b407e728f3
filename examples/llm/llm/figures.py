"""What a round moves with adapters only, against the full model, per client.

Run from ``examples/llm``: ``python -m llm.figures`` (``--lora-rank 8``, ``--n-embd 64``
... to try other sizes). It prints the bytes of the full model (frozen and trainable, as
its state dict holds them), of the LoRA adapters, and of the adapters on the client
(its head and tail) and on its helper (the body) at the default cuts. Sent per client per
round, each way: the adapters of its head and tail to and from the client plus those of
its body to and from its helper, i.e. all adapters once; with the full model sent, all of
the model once.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from llm.model import BLOCKS, default_cuts, model_fn
from llm.settings import APP_DEFAULTS


def _body_blocks(config: Mapping[str, Any]) -> tuple[int, int]:
    """The first and past-the-last block index of the body at the default cuts."""
    first, last = (int(name.rsplit(".", 1)[1]) for name in default_cuts(config).split(","))
    return first, last


def adapter_figures(config: Mapping[str, Any]) -> dict[str, Any]:
    """Bytes of the full model, its adapters, and the adapters per part."""
    model = model_fn(config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    first, last = _body_blocks(config)
    body = tuple(f"{BLOCKS}.{i}." for i in range(first, last))
    sizes = {k: t.numel() * t.element_size() for k, t in model.state_dict().items()}
    adapters = {k: b for k, b in sizes.items() if k in trainable}
    on_helper = sum(b for k, b in adapters.items() if k.startswith(body))
    full, total = sum(sizes.values()), sum(adapters.values())
    return {
        "full_model_bytes": full,
        "adapter_bytes": total,
        "adapter_share": total / full,
        "client_adapter_bytes": total - on_helper,
        "body_adapter_bytes": on_helper,
        "per_client_per_round_each_way": {"adapters": total, "full_model": full},
        "cuts": default_cuts(config),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key in ("n-layer", "n-embd", "n-head", "lora-rank", "seq-len"):
        parser.add_argument(f"--{key}", type=int, default=APP_DEFAULTS[key])
    args = parser.parse_args()
    config = {key.replace("_", "-"): value for key, value in vars(args).items()}
    print(json.dumps(adapter_figures(config), indent=1))


if __name__ == "__main__":
    main()
