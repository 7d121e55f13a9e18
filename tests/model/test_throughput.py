"""Peak FLOPs for MFU come from Lightning's table, never from a name that merely contains another GPU's."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from medkor.model.throughput import peak_tflops_for


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4),  # SXM
    ("NVIDIA H100 PCIe", 756.0),  # was given the SXM's figure
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA L40", None),  # Lightning would read it as its "l4" entry; was given the L4's figure
    ("NVIDIA L40S", None),
    ("Some Future GPU", None),
])
def test_peak_of_a_cuda_device_by_its_name(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    with pytest.warns(UserWarning) if name == "Some Future GPU" else nullcontext():
        peak = peak_tflops_for(torch.device("cuda", 0))
    assert peak == (pytest.approx(tflops) if tflops else None)


def test_no_peak_off_cuda():
    assert peak_tflops_for(torch.device("cpu")) is None

