"""--device values: parsing without torch, resolution with a clear error for absent devices."""

import pytest
import torch

from torchexp.devices import check_device_spec, resolve_device
from torchexp.errors import DeviceError

NO_CUDA = not torch.cuda.is_available()


def test_cpu_resolves_to_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_cuda_when_there_is_one_else_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_absent_cuda_device_is_named_in_the_error(spec):
    with pytest.raises(DeviceError, match=rf"device '{spec}' is not available: this machine has no CUDA device"):
        resolve_device(spec)


def test_cuda_index_beyond_the_device_count_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"device 'cuda:3' is not available: this machine has 2 CUDA devices"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1", "cpu:0", " cpu", "mps", ""])
def test_malformed_specs_are_refused_naming_them(spec):
    with pytest.raises(DeviceError, match=rf"device '{spec}' is not valid: use auto, cpu, cuda or cuda:N"):
        check_device_spec(spec)
    with pytest.raises(DeviceError, match=r"is not valid"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_well_formed_specs_pass_the_check(spec):
    assert check_device_spec(spec) == spec
