"""trainer.precision: the hardware probe behind `auto`, and what training records of it."""

import json
import os

import pytest
import torch

import torchexp.precision
from test_runner import ConvData, ConvRunner, finish, make_runner
from torchexp.precision import choose_precision, cpu_native_bf16, read_cpu_flags
from torchexp import loop

AVX2_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
SAPPHIRE_RAPIDS_CPUINFO = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "text, native",
    [(AVX2_CPUINFO, None), (SAPPHIRE_RAPIDS_CPUINFO, "avx512_bf16"), (GRAVITON3_CPUINFO, "bf16")],
)
def test_the_probe_reads_the_cpu_flags_of_x86_and_arm(tmp_path, text, native):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_native_bf16(read_cpu_flags(str(path))) == native


def test_the_probe_finds_no_flags_without_proc_cpuinfo(tmp_path):
    assert read_cpu_flags(str(tmp_path / "missing")) == set()


def test_auto_is_fp32_on_a_cpu_without_native_bf16():
    choice = choose_precision("auto", CPU, {"avx2", "fma"})
    assert (choice.used, choice.slow) == ("fp32", False)
    assert choice.reason == "trainer.precision auto: this CPU has no native bf16 (no avx512_bf16, amx_bf16 or Arm bf16 flag), so fp32"


def test_auto_is_bf16_on_a_cpu_with_native_bf16():
    choice = choose_precision("auto", CPU, {"avx2", "avx512f", "avx512_bf16"})
    assert (choice.used, choice.slow) == ("bf16", False)
    assert choice.reason == "trainer.precision auto: this CPU computes bf16 natively (avx512_bf16), so bf16"


@pytest.mark.parametrize("capability, used", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, used):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    assert choose_precision("auto", torch.device("cuda", 0)).used == used


def test_explicit_bf16_without_native_support_runs_but_is_flagged_slow():
    choice = choose_precision("bf16", CPU, {"avx2"})
    assert (choice.used, choice.slow) == ("bf16", True)
    assert "emulated and will be much slower than fp32" in choice.reason


def test_explicit_precisions_are_kept_as_asked():
    assert choose_precision("bf16", CPU, {"amx_bf16"}).used == "bf16"
    assert not choose_precision("bf16", CPU, {"amx_bf16"}).slow
    assert choose_precision("fp32", CPU, {"avx512_bf16"}).used == "fp32"


def train_with_flags(tmp_path, monkeypatch, flags, precision, max_epochs=1):
    """Train the conv project on a CPU that reports `flags`."""
    monkeypatch.setattr(torchexp.precision, "read_cpu_flags", lambda: flags)
    runner = make_runner(tmp_path, ConvRunner, precision=precision)
    runner.data = ConvData(runner.config, 0)
    runner.data.load_datasets("")
    runner.data.load_loaders("", 0)
    try:
        loop.train(runner, CPU, max_epochs, 100)
    finally:
        finish(runner)
    return runner


def read_log(runner) -> str:
    with open(runner.experiment.log_path) as file:
        return file.read()


@pytest.mark.parametrize("flags, used, dtype", [({"avx2"}, "fp32", torch.float32), ({"avx512_bf16"}, "bf16", torch.bfloat16)])
def test_training_with_auto_says_once_what_it_chose_and_records_it_in_the_checkpoint(tmp_path, monkeypatch, flags, used, dtype):
    runner = train_with_flags(tmp_path, monkeypatch, flags, "auto")
    assert {seen[1] for seen in runner.seen} == {dtype}
    assert read_log(runner).count("trainer.precision auto:") == 1
    path = os.path.join(runner.experiment.checkpoints_path, "1.checkpoint.pt")
    state = torch.load(path, weights_only=True)
    assert state["precision"]["configured"] == "auto" and state["precision"]["used"] == used
    assert state["precision"]["reason"].startswith("trainer.precision auto: this CPU")
    with open(path + ".json") as file:
        assert json.load(file)["precision"] == used


def test_explicit_bf16_on_a_cpu_without_it_warns_once_then_trains(tmp_path, monkeypatch):
    runner = train_with_flags(tmp_path, monkeypatch, {"avx2"}, "bf16")
    assert {seen[1] for seen in runner.seen} == {torch.bfloat16}
    log = read_log(runner)
    assert log.count("WARNING trainer.precision bf16: this CPU has no native bf16") == 1


def test_resuming_in_another_precision_warns(tmp_path, monkeypatch):
    train_with_flags(tmp_path, monkeypatch, {"avx512_bf16"}, "auto")
    runner = train_with_flags(tmp_path, monkeypatch, {"avx2"}, "auto", max_epochs=2)
    assert "checkpoint trained in bf16 (trainer.precision auto: this CPU computes bf16 natively (avx512_bf16), so bf16); this run continues in fp32" in read_log(runner)
