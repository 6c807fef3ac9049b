"""The data of nanogpt_chars: a corpus of text files, split by file into training and
validation text, the training text read as a stream of blocks.

At init, `create` lists the corpus's files with their sizes, builds the vocabulary and
decides the split (the last files, `data.val_fraction` of the bytes, are the validation
text), all kept in the experiment's data.json: serving, which has no corpus, finds the
vocabulary there. Every later command reads the files again and checks that they are the
same.
"""

import warnings
from typing import Any

import torchexp
from nanogpt_chars.corpus import build_vocabulary, describe_difference, encode, list_files, read_text, split_files
from nanogpt_chars.stream import CharStream, fixed_blocks
from torchexp import ConfigError, DataError
from torchexp.extras import require_extra
from torchexp.loaders import TensorLoader


class NanoGPTCharsData(torchexp.Data):
    """The corpus under --data-path (the standard library's modules by default)."""

    def create(self, data_path: str) -> dict[str, Any]:
        """List the files, build the vocabulary and decide the split, once; what this
        returns is saved to the experiment's data.json.

        Raises:
            DataError: the corpus is missing, unreadable, or too short for a block.
            ConfigError: trainer.max_steps is null, model.n_embd is not a multiple of
                model.n_head, or the configured prompt holds characters the corpus lacks.
        """
        check_budget(self.get_conf("trainer", "max_steps"))
        check_model_shape(self.get_conf("model", "n_embd"), self.get_conf("model", "n_head"))
        files = list_files(data_path, self.get_conf("data", "pattern"))
        validation_files = split_files(files, self.get_conf("data", "val_fraction"))
        train_text = read_text(data_path, files[:-validation_files])
        validation_text = read_text(data_path, files[-validation_files:])
        vocabulary = build_vocabulary(train_text + validation_text)
        check_prompt(self.get_conf("sampling", "prompt"), vocabulary)
        check_lengths(data_path, len(train_text), len(validation_text), self.get_conf("model", "block_size"))
        return {
            "files": files,
            "validation_files": validation_files,
            "vocabulary": vocabulary,
            "characters": {"train": len(train_text), "validation": len(validation_text)},
        }

    def load_datasets(self, data_path: str) -> None:
        """Fill self.datasets["train" | "validation" | "test"] with character ids; the test
        set is the validation text whole, the validation set a fixed part of it.

        Raises:
            DataError: the files under `data_path` are not those listed at init.
        """
        files = list_files(data_path, self.get_conf("data", "pattern"))
        difference = describe_difference(files, self.state["files"])
        if difference is not None:
            raise DataError(f"the corpus under {data_path} is not the one this experiment was created from ({difference}): pass the --data-path of its init")
        split = len(files) - self.state["validation_files"]
        try:
            train = encode(read_text(data_path, files[:split]), self.state["vocabulary"])
            validation = encode(read_text(data_path, files[split:]), self.state["vocabulary"])
        except ValueError as error:
            raise DataError(f"the corpus under {data_path} is not the one this experiment was created from: its text {error}") from error
        block_size = self.get_conf("model", "block_size")
        self.datasets = {
            "train": train,
            "validation": fixed_blocks(validation, block_size, self.get_conf("data", "validation_blocks")),
            "test": fixed_blocks(validation, block_size, None),
        }

    def load_loaders(self, data_path: str, num_workers: int) -> None:
        """Fill self.loaders: torchdata's StatefulDataLoader over the training stream, whose
        state torchexp keeps in mid-epoch checkpoints, and TensorLoaders over the fixed
        validation and test blocks."""
        require_extra("loaders", "nanogpt_chars's train loader")
        from torchdata.stateful_dataloader import StatefulDataLoader

        batch_size, block_size = self.get_conf("data", "batch_size"), self.get_conf("model", "block_size")
        stream = CharStream(self.datasets["train"], block_size, self.seed)
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, which torch 2.14 deprecates: a warning of
            # theirs on every command, about nothing this project does.
            warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
            train = StatefulDataLoader(stream, batch_size=batch_size, num_workers=num_workers)
        self.loaders = {
            "train": train,
            "validation": TensorLoader(self.datasets["validation"], batch_size),
            "test": TensorLoader(self.datasets["test"], batch_size),
        }


def check_budget(max_steps: int | None) -> None:
    """Raises ConfigError unless the experiment trains by steps: the learning rate decays over them."""
    if max_steps is None:
        raise ConfigError("trainer.max_steps is null: nanogpt_chars trains by optimizer steps, its learning rate decaying over them; set it, e.g. --set trainer.max_steps=300")


def check_model_shape(width: int, heads: int) -> None:
    """Raises ConfigError unless the heads divide the width."""
    if width % heads:
        raise ConfigError(f"model.n_embd {width} is not a multiple of model.n_head {heads}: each head takes an equal part of the width")


def check_lengths(data_path: str, train: int, validation: int, block_size: int) -> None:
    """Raises DataError unless the training text holds two blocks (an epoch's first block
    starts anywhere in the first) and the validation text one, each with the character after it."""
    for split, length, least in (("training", train, 2 * block_size + 1), ("validation", validation, block_size + 1)):
        if length < least:
            raise DataError(
                f"the {split} text under {data_path} has {length} characters, and needs {least} at least with model.block_size "
                f"{block_size}: pass a larger corpus, or change data.val_fraction or model.block_size"
            )


def check_prompt(prompt: str, vocabulary: list[str]) -> None:
    """Raises ConfigError unless the corpus has every character of sampling.prompt (the
    test's sample and the server's example start from it)."""
    try:
        encode(prompt, vocabulary)
    except ValueError as error:
        raise ConfigError(f"sampling.prompt {prompt!r} {error}: set another with --set sampling.prompt=...") from error

