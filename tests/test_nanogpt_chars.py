"""The character-level GPT example (examples/nanogpt_chars) end to end, on a tiny model and
a tiny corpus of text files the test writes: init, training by steps through torchdata's
StatefulDataLoader over a stream read by two workers, to a budget that ends in the middle
of an epoch; test; create_release; text generated through the serving app; and a SIGKILL
in the second epoch, then a resume, ending bit-identical to a run never killed, with every
checkpoint reproduced by `verify`."""

import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

from conftest import REPO, assert_identical, kill_group_when
from torchexp import checkpoints
from torchexp.folder import Experiment
from torchexp.serving.options import ServeOptions
from torchexp.serving.server import make_app

EXAMPLE = os.path.join(REPO, "examples", "nanogpt_chars")
# The repository's venv may install the example (`pip install -e examples/nanogpt_chars`),
# which is how a user's processes find it; otherwise it is taken from its folder, by this
# test and by the process it starts (`kill_after_checkpoint`).
INSTALLED = importlib.util.find_spec("nanogpt_chars") is not None
if not INSTALLED:
    sys.path.append(EXAMPLE)

from nanogpt_chars.__main__ import cli  # noqa: E402

# A model of a few thousand parameters, blocks of 16 characters, 8 blocks a batch.
TINY = (
    "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "data.batch_size=8",
    "data.validation_blocks=8", "sampling.max_new_tokens=12", "training.warmup_steps=3",
)  # fmt: skip
# Two batches a step; 20 steps end in the middle of the second epoch (14 steps each).
STEPS = ("trainer.max_steps=20", "trainer.validate_every_steps=8", "trainer.grad_accumulation=2")


def write_corpus(folder) -> None:
    """Write four small Python-like files (about 4.5 KB) to `folder`, and a file data.pattern leaves out."""
    folder.mkdir()
    for name in ("alpha", "beta", "gamma", "delta"):
        lines = [f"def {name}_{index}(value):\n    return value * {index} + {len(name)}\n\n" for index in range(24)]
        (folder / f"{name}.py").write_text("".join(lines), encoding="utf-8")
    (folder / "notes.md").write_text("not matched by data.pattern\n", encoding="utf-8")


def invoke(root, name: str, *args: str) -> str:
    """Run the example's command line in this process on experiment `name` under `root`."""
    base = ["--experiments-path", str(root / "experiments"), "--data-path", str(root / "corpus"), "--experiment-name", name]
    result = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def init(root, name: str, *settings: str) -> None:
    pairs = [item for setting in (*TINY, *STEPS, *settings) for item in ("--set", setting)]
    invoke(root, name, "init", "--seed", "7", *pairs)


def load_checkpoint(root, name: str, filename: str) -> dict:
    return torch.load(root / "experiments" / name / "checkpoints" / filename, weights_only=True)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A folder with the corpus and experiment `x`, trained 20 steps by two workers and released."""
    root = tmp_path_factory.mktemp("nanogpt_chars")
    write_corpus(root / "corpus")
    init(root, "x")
    invoke(root, "x", "train", "--num-workers", "2", "--device", "cpu")
    invoke(root, "x", "create_release")
    return root


def test_init_lists_the_files_builds_the_vocabulary_and_holds_out_the_last_file(released):
    state = json.loads((released / "experiments" / "x" / "data.json").read_text())
    assert [entry["path"] for entry in state["files"]] == ["alpha.py", "beta.py", "delta.py", "gamma.py"]
    assert state["validation_files"] == 1  # gamma.py: the last file holds well over 5 % of the bytes
    text = "".join((released / "corpus" / entry["path"]).read_text() for entry in state["files"])
    assert state["vocabulary"] == sorted(set(text)) and sum(state["characters"].values()) == len(text)


def test_training_by_steps_ends_mid_epoch_with_the_streams_state_per_worker(released):
    folder = released / "experiments" / "x" / "checkpoints"
    assert sorted(name for name in os.listdir(folder) if name.endswith(".checkpoint.pt")) == ["16.checkpoint.pt", "20.checkpoint.pt", "8.checkpoint.pt"]
    final = load_checkpoint(released, "x", "20.checkpoint.pt")
    assert final["counters"]["step"] == 20 and final["counters"]["epoch"] == 1 and final["counters"]["iteration"] > 0
    (loader_state,) = final["loader_by_rank"]
    assert len(loader_state["_snapshot"]["_worker_snapshots"]) == 2
    lines = [json.loads(line) for line in (released / "experiments" / "x" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["kind"] == "validation"] == [8, 16, 20]


def test_test_reports_loss_bits_per_character_and_a_sample(released):
    invoke(released, "x", "test", "--step", "20", "--device", "cpu")
    results = json.loads((released / "experiments" / "x" / "results" / "20.standard.test.json").read_text())["results"]
    # Uniform guessing over the vocabulary scores log2(vocabulary) bits a character: 20 steps beat it.
    vocabulary = json.loads((released / "experiments" / "x" / "data.json").read_text())["vocabulary"]
    assert results["bits_per_character"] < math.log2(len(vocabulary))
    assert results["bits_per_character"] == pytest.approx(results["loss"] / math.log(2))
    assert results["prompt"] == "def " and len(results["sample"]) == 12 and set(results["sample"]) <= set(vocabulary)


def test_the_release_generates_text_for_prompts_batched_together(released):
    app = make_app(Experiment(str(released / "experiments"), "x"), ServeOptions(device="cpu", threads=1))
    with TestClient(app) as client:
        body = {"instances": ["def ", {"prompt": "return value", "max_new_tokens": 5}, "def "]}
        answer = client.post("/v1/models/x:predict", json=body)
        assert answer.status_code == 200, answer.text
        first, short, again = answer.json()["predictions"]
        assert first["prompt"] == "def " and len(first["completion"]) == 12 and first == again
        assert short["prompt"] == "return value" and len(short["completion"]) == 5
        alone = client.post("/v1/models/x:predict", json={"instances": ["def "]}).json()["predictions"]
        assert alone == [first]  # each prompt draws from its own generator, whatever is batched with it
        answer = client.post("/v1/models/x:predict", json={"instances": ["def €"]})
        assert (answer.status_code, answer.json()) == (400, {"error": "instances[0]: the prompt holds 1 character the corpus lacks: '€'"})


# A mid-epoch checkpoint after every step; 40 steps end in the third epoch (14 steps each).
KILLED = ("trainer.checkpoint_every_steps=1", "trainer.max_steps=40")
KILL_AFTER = 17  # the step whose checkpoint starts the kill's clock: in the second epoch


@pytest.fixture
def one_thread():
    """One torch thread in this process, as in the process the test starts: the sums of a
    LayerNorm's gradients over a batch come out in another order, and differ in their last
    bits, with another number of threads. (serve's app sets this process's threads too.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_sigkill_then_resume_ends_bit_identical_to_a_run_never_killed(tmp_path, one_thread):
    write_corpus(tmp_path / "corpus")
    init(tmp_path, "straight", *KILLED)
    init(tmp_path, "killed", *KILLED)
    train = ["train", "--num-workers", "2", "--device", "cpu"]
    invoke(tmp_path, "straight", *train)
    assert kill_after_checkpoint(tmp_path, "killed", train, KILL_AFTER), "the kill came after the run's end"
    invoke(tmp_path, "killed", *train)
    log = (tmp_path / "experiments" / "killed" / "verbose.log").read_text()
    assert re.search(r"resumed from \d+\.checkpoint\.interrupt\.pt: \d+ steps done; in epoch \d+ after batch \d+", log), "no resume mid-epoch"
    assert_identical(load_checkpoint(tmp_path, "killed", "40.checkpoint.pt"), load_checkpoint(tmp_path, "straight", "40.checkpoint.pt"))
    verified = invoke(tmp_path, "killed", "verify", "--all", "--device", "cpu")  # each of steps 8, 16, ... 40 trained again
    assert verified.count(": bit-identical (") == 5, verified


def kill_after_checkpoint(root, name: str, train: list[str], step: int) -> bool:
    """Start `train` in a process of its own, and SIGKILL it (and its loader workers) at a
    random moment after it saved the checkpoint of `step` or a later one; return whether
    it was still running then."""
    folder = root / "experiments" / name / "checkpoints"
    command = [sys.executable, "-m", "nanogpt_chars", "--experiments-path", str(root / "experiments"), "--data-path", str(root / "corpus")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not INSTALLED:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [EXAMPLE, env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [*command, "--experiment-name", name, *train], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    return kill_group_when(process, lambda: latest_checkpoint(folder) >= step, random.Random(step).uniform(0, 0.05))


def latest_checkpoint(folder) -> int:
    """The furthest step of the checkpoints in `folder` (0: none yet)."""
    steps = [checkpoints.parse_filename(name) for name in os.listdir(folder)] if folder.is_dir() else []
    return max((parsed[0] for parsed in steps if parsed is not None), default=0)
