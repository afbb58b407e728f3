"""Memory figures every part of flsplit reports the same way.

Profiles, helpers and clients all report the peak resident memory of their process and
the bytes of the tensors they move or keep; one definition keeps those figures
comparable.
"""

from __future__ import annotations

import resource
import sys

import torch

MIB = 1024.0 * 1024.0


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far.

    Returns
    -------
    float
        ``getrusage``'s ``ru_maxrss`` in MiB. Linux reports it in KiB, macOS in bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor's elements.

    Parameters
    ----------
    tensor : torch.Tensor
        Any tensor (its storage may be larger, e.g. for a view; that does not count).

    Returns
    -------
    int
        ``numel() * element_size()``: what the tensor takes on the wire or as a copy.
    """
    return tensor.numel() * tensor.element_size()
