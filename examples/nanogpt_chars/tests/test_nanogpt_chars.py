"""Tests of nanogpt_chars: its command line on a tiny corpus, its stream, its model and
generation, its schedule, and the sentences it answers mistakes with."""

import json
import math
import types

import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from nanogpt_chars import stream as stream_module
from nanogpt_chars.__main__ import cli
from nanogpt_chars.corpus import decode, describe_difference, encode, split_files
from nanogpt_chars.model import GPT, GPTConfig, KVCache, generate
from nanogpt_chars.runner import learning_rate_factor, read_instance
from nanogpt_chars.stream import CharStream, fixed_blocks
from torchexp.folder import Experiment
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import make_app

TINY = ("model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "data.batch_size=8", "sampling.max_new_tokens=10")


def write_corpus(folder) -> None:
    """Three small Python-like files, about 3 KB."""
    folder.mkdir()
    for name in ("one", "three", "two"):
        (folder / f"{name}.py").write_text("".join(f"def {name}(x):\n    return x + {index}\n\n" for index in range(30)), encoding="utf-8")


def run(root, *args: str):
    """Run the command line on experiment `x` under `root`, its corpus in root/corpus; return click's result."""
    base = ["--experiments-path", str(root / "experiments"), "--data-path", str(root / "corpus"), "--experiment-name", "x"]
    return CliRunner().invoke(cli, [*base, *args])


def init(root, *settings: str):
    return run(root, "init", *[item for setting in (*TINY, *settings) for item in ("--set", setting)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with a corpus and experiment `x`, trained 6 steps and released."""
    root = tmp_path_factory.mktemp("trained")
    write_corpus(root / "corpus")
    for result in (init(root, "trainer.max_steps=6"), run(root, "train", "--device", "cpu"), run(root, "create_release")):
        assert result.exit_code == 0, result.output
    return root


def test_init_keeps_the_files_the_vocabulary_and_the_split(trained):
    state = json.loads((trained / "experiments" / "x" / "data.json").read_text())
    assert [entry["path"] for entry in state["files"]] == ["one.py", "three.py", "two.py"]
    assert state["validation_files"] == 1 and "d" in state["vocabulary"]


def test_test_gives_bits_per_character_and_a_sample(trained):
    result = run(trained, "test", "--device", "cpu")
    assert result.exit_code == 0, result.output
    results = json.loads((trained / "experiments" / "x" / "results" / "6.standard.test.json").read_text())["results"]
    assert results["bits_per_character"] == pytest.approx(results["loss"] / math.log(2)) and len(results["sample"]) == 10


def test_the_release_answers_a_prompt_with_generated_text(trained):
    with TestClient(make_app(Experiment(str(trained / "experiments"), "x"), ServeOptions(device="cpu", threads=1))) as client:
        answer = client.post("/v1/models/x:predict", json={"instances": [{"prompt": "def t", "max_new_tokens": 4}]})
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["predictions"]
        assert prediction["prompt"] == "def t" and len(prediction["completion"]) == 4


def test_a_changed_corpus_is_one_sentence_naming_the_file(tmp_path):
    write_corpus(tmp_path / "corpus")
    assert init(tmp_path).exit_code == 0
    (tmp_path / "corpus" / "one.py").write_text("changed\n")
    result = run(tmp_path, "train", "--device", "cpu")
    assert result.exit_code == 5
    assert result.output.endswith(
        f"Error: the corpus under {tmp_path / 'corpus'} is not the one this experiment was created from "
        "(one.py has 8 bytes, not 920): pass the --data-path of its init\n"
    )


@pytest.mark.parametrize(
    "settings, code, sentence",
    [
        (("trainer.max_steps=null", "trainer.validate_every_steps=null", "trainer.checkpoint_every_steps=null"), 2, "trainer.max_steps is null: nanogpt_chars trains by optimizer steps, its learning rate decaying over them; set it, e.g. --set trainer.max_steps=300"),
        (("model.n_embd=15",), 2, "model.n_embd 15 is not a multiple of model.n_head 2: each head takes an equal part of the width"),
        (("sampling.prompt=class",), 2, "sampling.prompt 'class' holds 4 characters the corpus lacks: 'a', 'c', 'l', 's': set another with --set sampling.prompt=..."),
        (("data.pattern=*.txt",), 5, "no file under {corpus} matches data.pattern '*.txt': pass --data-path another folder, or init with --set data.pattern=..."),
        (("model.block_size=2000",), 5, "the training text under {corpus} has 1900 characters, and needs 4001 at least with model.block_size 2000: pass a larger corpus, or change data.val_fraction or model.block_size"),
    ],
)
def test_init_refuses_a_mistake_in_one_sentence(tmp_path, settings, code, sentence):
    write_corpus(tmp_path / "corpus")
    result = init(tmp_path, *settings)
    assert (result.exit_code, result.output) == (code, f"Error: {sentence.format(corpus=tmp_path / 'corpus')}\n")


def test_a_missing_corpus_folder_is_one_sentence(tmp_path):
    result = init(tmp_path)
    assert (result.exit_code, result.output) == (5, f"Error: the corpus folder {tmp_path / 'corpus'} is missing: pass --data-path a folder of text files\n")


def test_the_default_corpus_is_the_standard_librarys_folder():
    import sysconfig

    option = next(option for option in cli.params if option.name == "data_path")
    assert option.default == sysconfig.get_paths()["stdlib"]


def share_of(tokens: torch.Tensor, epoch: int, rank: int, worker: int, monkeypatch) -> list[int]:
    """The offsets rank `rank`'s DataLoader worker `worker` (of 2 and 2) reads in `epoch`."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: types.SimpleNamespace(num_workers=2, id=worker))
    stream = CharStream(tokens, 8, seed=1)
    stream.set_epoch(epoch)
    return stream.take_share(stream.draw_offsets())


def test_ranks_and_workers_read_disjoint_blocks_that_cover_the_epoch(monkeypatch):
    tokens = torch.arange(1000) % 50
    shares = [share_of(tokens, 1, rank, worker, monkeypatch) for rank in range(2) for worker in range(2)]
    offsets = [offset for share in shares for offset in share]
    assert len(offsets) == len(set(offsets)) and sorted(offsets) == list(range(min(offsets), 1000 - 8, 8))
    assert share_of(tokens, 2, 0, 0, monkeypatch) != shares[0]  # another epoch, another order


def test_the_stream_resumes_from_its_state_without_reading_what_it_gave():
    tokens = torch.arange(500) % 50
    stream = CharStream(tokens, 8, seed=1)
    stream.set_epoch(3)
    whole = [x for x, _ in stream]
    stream.set_epoch(3)
    iterator = iter(stream)
    for _ in range(10):
        next(iterator)
    resumed = CharStream(tokens, 8, seed=1)
    resumed.load_state_dict(stream.state_dict())
    assert torch.equal(torch.stack(list(x for x, _ in resumed)), torch.stack(whole[10:]))


def test_a_block_is_its_characters_and_the_next_ones():
    x, y = fixed_blocks(torch.arange(100, dtype=torch.uint8), 8, 3)
    assert x.dtype == torch.long and x.shape == y.shape == (3, 8)
    assert torch.equal(y, x + 1) and x[0, 0] == 0 and x[-1, 0] == 88


def test_the_model_predicts_every_position_with_tied_weights():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8))
    assert model(torch.zeros(3, 8, dtype=torch.long)).shape == (3, 8, 11)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_cached_positions_give_the_logits_of_a_whole_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)).eval()
    text = torch.randint(11, (2, 8))
    cache = KVCache()
    with torch.no_grad():
        pieces = [model(text[:, :5], cache), model(text[:, 5:6], cache), model(text[:, 6:], cache)]
        torch.testing.assert_close(torch.cat(pieces, 1), model(text))


def test_greedy_generation_past_the_block_is_nanogpts_cropping_loop():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8)).double().eval()
    prompts = torch.randint(11, (2, 3))
    with torch.no_grad():
        generated = generate(model, prompts, 9, 0.0, None, [])
        text = prompts
        for _ in range(9):  # nanoGPT's generate: the whole context, cropped to the block, every time
            text = torch.cat((text, model(text[:, -6:])[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(generated, text[:, 3:])


def test_sampling_draws_from_each_rows_own_generator():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    prompt = torch.randint(11, (1, 2))
    with torch.no_grad():
        alone = generate(model, prompt, 5, 1.0, 3, [torch.Generator().manual_seed(4)])
        beside = generate(model, prompt.repeat(2, 1), 5, 1.0, 3, [torch.Generator().manual_seed(9), torch.Generator().manual_seed(4)])
    assert torch.equal(beside[1:], alone)


def test_the_learning_rate_warms_up_then_decays_to_its_floor():
    factors = [learning_rate_factor(step, warmup=4, total=14, floor=0.1) for step in range(20)]
    assert factors[:4] == [0.2, 0.4, 0.6, 0.8] and factors[4] == 1.0
    assert factors[9] == pytest.approx(0.55) and factors[14:] == [0.1] * 6
    assert all(later <= earlier for earlier, later in zip(factors[4:], factors[5:]))


def test_characters_round_trip_and_unknown_ones_are_named():
    vocabulary = sorted("abc\n ")
    assert decode(encode("cab\n", vocabulary).tolist(), vocabulary) == "cab\n"
    assert encode("abc", vocabulary).dtype == torch.uint8
    with pytest.raises(ValueError, match=r"^holds 2 characters the corpus lacks: 'x', 'é'$"):
        encode("axé", vocabulary)
    with pytest.raises(ValueError, match=r"^holds 1 character the corpus lacks: '\\ud800'$"):
        encode("a\ud800", vocabulary)


def test_the_validation_files_are_the_last_holding_the_fraction():
    files = [{"path": name, "bytes": size} for name, size in (("a", 50), ("b", 30), ("c", 15), ("d", 5))]
    assert [split_files(files, fraction) for fraction in (0.01, 0.05, 0.2, 0.9)] == [1, 1, 2, 3]
    assert describe_difference(files[:3], files) == "d is missing"
    assert describe_difference([*files, {"path": "e", "bytes": 1}], files) == "e is new"


@pytest.mark.parametrize(
    "instance, sentence",
    [
        (7, 'an instance must be a prompt, e.g. "def ", or {"prompt": "def ", "max_new_tokens": 10}, not a number'),
        ("", "the prompt is empty: the model needs one character at least to start from"),
        ({"prompt": "a", "temperature": 1}, "unknown key 'temperature': an instance holds 'prompt' and, if you like, 'max_new_tokens'"),
        ({"prompt": None}, "'prompt' must be a string, not null"),
        ({"prompt": "a", "max_new_tokens": 11}, "'max_new_tokens' must be a whole number from 1 to 10, not 11"),
        ({"prompt": "a", "max_new_tokens": True}, "'max_new_tokens' must be a whole number from 1 to 10, not true or false"),
    ],
)
def test_a_malformed_instance_is_one_sentence(instance, sentence):
    with pytest.raises(ValueError) as caught:
        read_instance(instance, 10)
    assert str(caught.value) == sentence
