"""Sharded (DCP) checkpoints in one process: written whole or not at all, every file
verified, nothing unpickled but DCP's metadata classes, refused under the other strategy."""

import json
import os
import pickle

import pytest
import torch
from click.testing import CliRunner

import fsdp_project
from fsdp_project import Model, cli
from torchexp import checkpoints, sharded
from torchexp.distributed import World
from torchexp.errors import CheckpointError, ConfigError
from torchexp.strategy import choose_units, wrap_model


def invoke(root, name: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--experiments-path", str(root / "experiments"), "--experiment-name", name, *args])
    assert result.exit_code == 0, result.output
    return result.output


def init(root, name: str, **trainer) -> None:
    (root / "schema.json").write_text('{"type": "object"}')
    (root / "config.json").write_text(json.dumps({"trainer": {"strategy": "fsdp", **trainer}}))
    invoke(root, name, "init", "--config-path", str(root / "config.json"), "--schema-path", str(root / "schema.json"))


@pytest.fixture
def trained(tmp_path):
    init(tmp_path, "s")
    invoke(tmp_path, "s", "train", "--max-epochs", "2", "--device", "cpu")
    return tmp_path, tmp_path / "experiments" / "s" / "checkpoints"


def test_one_process_under_fsdp_writes_folders_that_load_whole_and_resume(trained):
    root, folder = trained
    found = checkpoints.list_checkpoints(str(folder))
    assert [item.name for item in found] == ["1.checkpoint.dcp", "2.checkpoint.dcp"] and all(item.sharded and item.verified for item in found)
    state = found[-1].load()
    model = Model()
    model.load_state_dict(state["model"])
    assert state["counters"]["epoch"] == 2 and state["world_size"] == 1
    output = invoke(root, "s", "train", "--max-epochs", "3", "--device", "cpu")
    assert "resumed from 2.checkpoint.dcp: 2 epochs done" in output
    assert "bit-identical" in invoke(root, "s", "verify", "--epoch", "3")


def test_a_corrupted_shard_is_named_and_training_resumes_from_the_checkpoint_before(trained):
    root, folder = trained
    shard = folder / "2.checkpoint.dcp" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"^checkpoint 2.checkpoint.dcp, file __0_0.distcp, does not match its SHA-256 \(corrupted\)$"):
        checkpoints.list_checkpoints(str(folder))[-1].load()
    output = invoke(root, "s", "train", "--max-epochs", "2", "--device", "cpu")
    assert "skipping checkpoint 2.checkpoint.dcp, file __0_0.distcp, does not match its SHA-256" in output
    assert "resumed from 1.checkpoint.dcp" in output


def test_a_missing_shard_is_named(trained):
    _, folder = trained
    os.remove(folder / "2.checkpoint.dcp" / "state.pt")
    assert "checkpoint 2.checkpoint.dcp, file state.pt, cannot be read" in checkpoints.list_checkpoints(str(folder))[-1].check()


def test_metadata_that_would_build_another_class_is_refused_even_when_its_hash_is_recorded(trained):
    _, folder = trained
    path = folder / "2.checkpoint.dcp"

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (path / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError, match="cannot be loaded safely: DCP metadata may not build posix.system"):
        sharded.load_full(str(path), "2.checkpoint.dcp")


def test_removal_and_killed_saves_leave_no_folder_behind(trained):
    _, folder = trained
    checkpoints.list_checkpoints(str(folder))[0].remove()
    assert sorted(os.listdir(folder)) == ["2.checkpoint.dcp", "2.checkpoint.dcp.json"]
    (folder / ".3.checkpoint.dcp.abc_123.tmp").mkdir()
    (folder / ".3.checkpoint.dcp.abc_123.tmp" / "__0_0.distcp").write_bytes(b"half")
    (folder / ".2.checkpoint.dcp.removing").mkdir()
    (folder / "4.checkpoint.interrupt.dcp.json").write_text("{}")
    removed = checkpoints.remove_temporaries(str(folder))
    assert removed == [".2.checkpoint.dcp.removing", ".3.checkpoint.dcp.abc_123.tmp", "4.checkpoint.interrupt.dcp.json"]
    assert sorted(os.listdir(folder)) == ["2.checkpoint.dcp", "2.checkpoint.dcp.json"]


def test_a_checkpoint_of_the_other_strategy_is_refused_in_one_sentence(trained):
    root, folder = trained
    config = root / "experiments" / "s" / "config.json"
    definition = json.loads(config.read_text())
    definition["config"]["trainer"]["strategy"] = "ddp"
    config.write_text(json.dumps(definition))
    result = CliRunner().invoke(cli, ["--experiments-path", str(root / "experiments"), "--experiment-name", "s", "train", "--max-epochs", "3", "--device", "cpu"])
    assert result.exit_code != 0
    assert (
        "checkpoint 2.checkpoint.dcp was saved under trainer.strategy fsdp, a folder of shards, and this run trains under ddp: "
        "train with the strategy it was saved under"
    ) in result.output
    assert "Traceback" not in result.output


def test_units_are_the_named_classes_or_the_direct_children_and_an_unknown_name_is_refused():
    model = Model()
    assert choose_units(model, None) == [model.blocks, model.head]
    assert choose_units(model, ["Block"]) == list(model.blocks)
    with pytest.raises(ConfigError, match=r"^trainer.fsdp_modules names Blok, which the model does not contain \(its classes: Block, LayerNorm, Linear, Model, Sequential\)$"):
        choose_units(model, ["Blok"])
    assert wrap_model(model, "fsdp", ["Block"], World(), torch.device("cpu"), None) is model  # one process trains it whole


def test_the_state_of_a_nested_path_is_placed_in_dicts_and_lists():
    state: dict = {}
    sharded.place(state, ("optimizer", "param_groups", 1, "lr"), 0.5)
    sharded.place(state, ("optimizer", "param_groups", 0, "lr"), 0.1)
    sharded.place(state, ("model", "w"), 1)
    assert state == {"optimizer": {"param_groups": [{"lr": 0.1}, {"lr": 0.5}]}, "model": {"w": 1}}


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_in_one_sentence(trained, monkeypatch):
    root, _ = trained
    monkeypatch.setattr(fsdp_project, "WIDTH", 8)
    result = CliRunner().invoke(cli, ["--experiments-path", str(root / "experiments"), "--experiment-name", "s", "train", "--max-epochs", "3", "--device", "cpu"])
    assert result.exit_code == 4, result.output
    assert "Error: checkpoint 2.checkpoint.dcp does not fit this runner: " in result.output and "Traceback" not in result.output


def test_weights_alone_are_gathered_for_releases_and_tests(trained):
    _, folder = trained
    checkpoint = checkpoints.list_checkpoints(str(folder))[-1]
    weights, whole = checkpoint.load(weights_only=True), checkpoint.load()
    assert "optimizer" not in weights and set(whole["optimizer"]) == {"state", "param_groups"}
    assert weights["model"].keys() == whole["model"].keys() and weights["counters"] == whole["counters"]


def test_retention_info_and_compare_count_the_folders(tmp_path):
    init(tmp_path, "kept", keep_checkpoints=1, checkpoint_every_steps=4)
    invoke(tmp_path, "kept", "train", "--max-epochs", "3", "--device", "cpu")
    folder = tmp_path / "experiments" / "kept" / "checkpoints"
    names = sorted(os.listdir(folder))
    assert names == ["3.checkpoint.dcp", "3.checkpoint.dcp.json"] or names == ["2.checkpoint.dcp", "2.checkpoint.dcp.json", "3.checkpoint.dcp", "3.checkpoint.dcp.json"]
    size = sum(os.path.getsize(folder / "3.checkpoint.dcp" / name) for name in os.listdir(folder / "3.checkpoint.dcp"))
    assert f"epoch 3 standard; {size / 1e6:.1f} MB" in invoke(tmp_path, "kept", "info")
    rows = json.loads(CliRunner().invoke(cli, ["--experiments-path", str(tmp_path / "experiments"), "compare", "--json"]).output)
    everything = sum(os.path.getsize(os.path.join(path, name)) for path, _, files in os.walk(tmp_path / "experiments" / "kept") for name in files)
    assert rows[0]["disk_bytes"] == everything > size  # the shards inside the folder count


def test_each_rank_checks_its_own_shards_and_rank_0_the_rest():
    assert [checkpoints.owns_file(name, 0, 2) for name in ("__0_0.distcp", "__1_0.distcp", ".metadata", "state.pt", "__2_0.distcp")] == [True, False, True, True, True]
    assert [checkpoints.owns_file(name, 1, 2) for name in ("__0_0.distcp", "__1_0.distcp", "__3_0.distcp")] == [False, True, True]
    assert all(checkpoints.owns_file(name, 0, 1) for name in ("__0_0.distcp", "__1_0.distcp", ".metadata"))


def test_a_share_that_verifies_does_not_vouch_for_the_whole(trained):
    _, folder = trained
    (folder / "2.checkpoint.dcp" / "state.pt").write_bytes(b"corrupt")
    checkpoint = checkpoints.list_checkpoints(str(folder))[-1]
    assert checkpoint.check((1, 2)) is None and not checkpoint.hashed  # rank 1 of 2 owns no file of one process
    assert "file state.pt" in checkpoint.check((0, 2))


def test_by_default_containers_give_their_members_and_tied_modules_stay_with_the_root():
    from nanogpt_chars.model import GPT, GPTConfig

    gpt = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=8))
    units = choose_units(gpt, None)
    assert units == [gpt.transformer.wpe, *gpt.transformer.h, gpt.transformer.ln_f]  # wte is tied to lm_head


def test_a_refused_write_of_shards_is_one_sentence_and_leaves_the_checkpoint_before(tmp_path, monkeypatch):
    init(tmp_path, "full")
    invoke(tmp_path, "full", "train", "--max-epochs", "1", "--device", "cpu")

    def refuse(self, plan, planner):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded.dcp.FileSystemWriter, "write_data", refuse)
    result = CliRunner().invoke(cli, ["--experiments-path", str(tmp_path / "experiments"), "--experiment-name", "full", "train", "--max-epochs", "2", "--device", "cpu"])
    assert result.exit_code == 8, result.output
    assert "Error: could not write " in result.output and "No space left on device" in result.output and "Traceback" not in result.output
    assert [item.name for item in checkpoints.list_checkpoints(str(tmp_path / "experiments" / "full" / "checkpoints"))] == ["1.checkpoint.dcp"]


def test_the_metadata_module_lends_only_the_classes_it_defines():
    import io

    forged = b"ctorch.distributed.checkpoint.metadata\ntorch\n."  # the torch module, which the metadata module imports
    with pytest.raises(pickle.UnpicklingError, match="may not build torch.distributed.checkpoint.metadata.torch"):
        sharded.MetadataUnpickler(io.BytesIO(forged)).load()
    genuine = b"ctorch.distributed.checkpoint.metadata\nMetadata\n."
    assert sharded.MetadataUnpickler(io.BytesIO(genuine)).load().__name__ == "Metadata"
