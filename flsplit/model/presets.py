"""Named device presets: how much slower or faster a device trains than a reference.

A user without the hardware can plan for it: a preset scales a reference device's
per-layer times (a profile measured with :mod:`flsplit.model.profile`, or the published
``vm-8vcpu`` column) into that device's.

Source of the factors: the per-layer training costs measured on real devices for
ResNet-101 and VGG-19 on CIFAR-10 (batch 128) published with "Workflow Optimization for
Parallel Split Learning" (Tirana, Tsigkari, Iosifidis, Chatzopoulos, IEEE INFOCOM 2024;
data set jtirana98/SFL-workflow-optimization, folder real_data/, MIT License). For each
device and kind of work we took the ratio of its total time over all profiled layers to
that of the cloud VM (8 vCPU), and the geometric mean of that ratio over the two models.
Rows the source reports as 0 (work a device could not run or did not report) were left
out; where no non-zero row remains the backward factor stands in.

Memory sizes are not in the source; they are the usual sizes of these devices
(Raspberry Pi 3B+: 1 GiB; Raspberry Pi 4B: 4 GiB variant; Jetson Nano: 4 GiB shared) and
assumptions for the laptop (16 GiB) and the VM (32 GiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REFERENCE_DEVICE = "vm-8vcpu"


@dataclass(frozen=True)
class DevicePreset:
    """Speed factors of a device relative to :data:`REFERENCE_DEVICE` (higher = slower)."""

    name: str
    forward: float
    backward: float
    update: float
    memory_mib: int
    description: str

    def scale(
        self,
        forward_ms: Sequence[float],
        backward_ms: Sequence[float],
        update_ms: Sequence[float],
        reference_factor: DevicePreset | None = None,
    ) -> tuple[list[float], list[float], list[float]]:
        """Turn per-layer times measured on ``reference_factor`` (default: the reference
        device) into this device's."""
        ref = reference_factor or PRESETS[REFERENCE_DEVICE]
        return (
            [t * self.forward / ref.forward for t in forward_ms],
            [t * self.backward / ref.backward for t in backward_ms],
            [t * self.update / ref.update for t in update_ms],
        )


PRESETS: dict[str, DevicePreset] = {
    p.name: p
    for p in (
        DevicePreset("vm", 1.0, 1.0, 1.0, 32768, "cloud VM, 8 vCPU (reference)"),
        DevicePreset("laptop", 3.24, 1.23, 0.66, 16384, "laptop CPU"),
        DevicePreset("rpi4", 31.77, 37.19, 24.12, 4096, "Raspberry Pi 4B"),
        DevicePreset("rpi3", 30.72, 29.63, 17.58, 1024, "Raspberry Pi 3B+"),
        DevicePreset("jetson-cpu", 345.41, 49.81, 19.99, 4096, "NVIDIA Jetson, CPU only"),
        DevicePreset("jetson-gpu", 1.94, 0.56, 0.56, 4096, "NVIDIA Jetson, GPU"),
    )
}
#: Names the published profiles use for the presets.
PROFILE_DEVICE_NAMES = {"vm": "vm-8vcpu"}
PRESETS[REFERENCE_DEVICE] = PRESETS["vm"]


def preset(name: str) -> DevicePreset:
    """Return the preset called ``name``; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(set(PRESETS) - {REFERENCE_DEVICE}))
        raise ValueError(f"unknown device preset {name!r}; known presets: {known}") from None
