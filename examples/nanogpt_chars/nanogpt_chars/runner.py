"""Training, testing and serving nanogpt_chars: the next character of every position.

torchexp runs the loop around these hooks, by optimizer steps (`trainer.max_steps`): a
step is `trainer.grad_accumulation` batches, whose gradients torchexp weighs by the tokens
`train_step` returns; it clips them to `trainer.grad_clip_norm`, steps AdamW and then the
warm-up and cosine schedule (`scheduler_interval = "step"`), validates every
`trainer.validate_every_steps` steps and checkpoints, mid-epoch included.

Serving generates text: `serve_preprocess` makes a fixed-shape tensor of a prompt,
`serve_forward` (which `serve --runtime torch` calls instead of the model) runs the
sampling loop, and `serve_postprocess` decodes the new characters. Outside training the
Data holds only its state, so the vocabulary comes from `self.data.state`.
"""

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

import torchexp
from nanogpt_chars.corpus import decode, encode
from nanogpt_chars.model import GPT, GPTConfig, generate


class NanoGPTCharsRunner(torchexp.Runner):
    """Cross-entropy of each next character; loss and bits per character of the validation text."""

    scheduler_interval = "step"  # the learning rate changes at every optimizer step, as nanoGPT's

    def init_model(self, device: torch.device) -> None:
        shape = {key: self.get_conf("model", key) for key in ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")}
        self.model = GPT(GPTConfig(vocab_size=len(self.data.state["vocabulary"]), **shape)).to(device)

    def init_optimizer(self, device: torch.device) -> None:
        """AdamW; weight decay on the 2-D weights only (matrices and embeddings), not on
        biases and LayerNorm gains, as nanoGPT."""
        parameters = list(self.model.parameters())
        groups = [
            {"params": [parameter for parameter in parameters if parameter.dim() >= 2], "weight_decay": self.get_conf("training", "weight_decay")},
            {"params": [parameter for parameter in parameters if parameter.dim() < 2], "weight_decay": 0.0},
        ]
        betas = (self.get_conf("training", "beta1"), self.get_conf("training", "beta2"))
        self.optimizer = torch.optim.AdamW(groups, lr=self.get_conf("training", "lr"), betas=betas)

    def init_others(self, device: torch.device) -> None:
        """The learning rate: linear warm-up, then cosine decay to training.min_lr at
        trainer.max_steps (the configuration's; `train --max-steps` beyond it stays at min_lr)."""
        factor = functools.partial(
            learning_rate_factor,
            warmup=self.get_conf("training", "warmup_steps"),
            total=self.get_conf("trainer", "max_steps"),
            floor=self.get_conf("training", "min_lr") / self.get_conf("training", "lr"),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict[str, Any]:
        """Return the mean cross-entropy over the batch's tokens, in nats, and their number:
        torchexp weighs each batch's loss by it, in accumulated gradients and averaged metrics."""
        inputs, targets = (tensor.to(device, non_blocking=True) for tensor in batch)
        logits = self.model(inputs)
        return {"loss": F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1)), "weight": targets.numel()}

    def test(self, epoch: int, device: torch.device) -> dict[str, Any]:
        """Called with the weights of step `epoch` loaded, in eval mode, under no_grad: the
        loss over every character of the validation text, in nats and in bits per
        character, and a sample generated from sampling.prompt."""
        loss, characters = self.measure_loss(self.data.loaders["test"])
        prompt = self.get_conf("sampling", "prompt")
        sample = self.complete(encode(prompt, self.data.state["vocabulary"])[None].long().to(device), self.get_conf("sampling", "max_new_tokens"))
        completion = decode(sample[0].tolist(), self.data.state["vocabulary"])
        self.logger.info(f"sample: {prompt + completion!r}")
        return {"loss": loss, "bits_per_character": loss / math.log(2), "characters": characters, "prompt": prompt, "sample": completion}

    def measure_loss(self, loader: Any) -> tuple[float, int]:
        """The cross-entropy of every character the loader's blocks predict, summed then
        divided by their number (nats), and that number."""
        total, characters = 0.0, 0
        for inputs, targets in loader:
            logits = self.model(inputs)
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction="sum").item()
            characters += targets.numel()
        return total / characters, characters

    def complete(self, prompts: torch.Tensor, steps: int) -> torch.Tensor:
        """Continue prompts of one length (B, T) by `steps` characters with the sampling
        settings, each row from its own generator seeded by sampling.seed."""
        seed = self.get_conf("sampling", "seed")
        generators = [torch.Generator().manual_seed(seed) for _ in range(len(prompts))]
        return generate(self.model, prompts, steps, self.get_conf("sampling", "temperature"), self.get_conf("sampling", "top_k"), generators)

    def serve_example(self) -> str:
        """The configured prompt, sampling.prompt ("def " by default)."""
        return self.get_conf("sampling", "prompt")

    def serve_preprocess(self, instance: Any) -> torch.Tensor:
        """An instance is a prompt, or {"prompt": ..., "max_new_tokens": N} for fewer new
        characters than sampling.max_new_tokens.

        Returns:
            block_size + 2 ids: the prompt's last block_size characters, left-padded with 0
            (all the model reads), its length, and the characters to add; every instance
            has this shape, so that instances batch together.

        Raises:
            ValueError: the instance is malformed, or the prompt holds an unknown character.
        """
        prompt, count = read_instance(instance, self.get_conf("sampling", "max_new_tokens"))
        block_size = self.get_conf("model", "block_size")
        try:
            ids = encode(prompt[-block_size:], self.data.state["vocabulary"]).long()
        except ValueError as error:
            raise ValueError(f"the prompt {error}") from None
        padded = torch.zeros(block_size + 2, dtype=torch.long)
        padded[block_size - len(ids) : block_size] = ids
        padded[block_size:] = torch.tensor([len(ids), count])
        return padded

    def serve_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Generate each instance's characters; return their ids (B, sampling.max_new_tokens),
        -1 after the count an instance asked for.

        Prompts of one length are generated together, so that none is padded; each row
        draws from its own generator, so that a prompt's completion does not depend on
        the requests batched with it.
        """
        block_size, width = self.get_conf("model", "block_size"), self.get_conf("sampling", "max_new_tokens")
        lengths, counts = batch[:, block_size], batch[:, block_size + 1]
        generated = torch.full((len(batch), width), -1, dtype=torch.long, device=batch.device)
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            steps = int(counts[rows].max())
            generated[rows, :steps] = self.complete(batch[rows, block_size - length : block_size], steps)
        generated[torch.arange(width, device=batch.device) >= counts[:, None]] = -1
        return generated

    def serve_postprocess(self, output: torch.Tensor, model_input: torch.Tensor, instance: Any) -> dict[str, str]:
        """{"prompt": the prompt as sent, "completion": the characters generated after it}."""
        ids = output.long()
        prompt = instance if isinstance(instance, str) else instance["prompt"]
        return {"prompt": prompt, "completion": decode(ids[ids >= 0].tolist(), self.data.state["vocabulary"])}


def learning_rate_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The learning rate at optimizer step `step` (from 0), as a fraction of training.lr:
    nanoGPT's `get_lr`, a linear warm-up over `warmup` steps, then a cosine from 1 down to
    `floor` at step `total`, and `floor` after."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= total:
        return floor
    progress = (step - warmup) / (total - warmup)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)


def read_instance(instance: Any, most: int) -> tuple[str, int]:
    """The prompt of an instance and the characters to add to it.

    Args:
        instance: a string, or {"prompt": a string, "max_new_tokens": 1 to `most`}.
        most: sampling.max_new_tokens, the count when the instance gives none.

    Raises:
        ValueError: another kind of instance, an unknown key, an empty prompt, or a count
            out of range; the message is one sentence for the client.
    """
    if isinstance(instance, str):
        prompt, count = instance, most
    elif isinstance(instance, dict):
        unknown = sorted(set(instance) - {"prompt", "max_new_tokens"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}: an instance holds 'prompt' and, if you like, 'max_new_tokens'")
        prompt, count = instance.get("prompt"), instance.get("max_new_tokens", most)
        if not isinstance(prompt, str):
            raise ValueError(f"'prompt' must be a string, not {describe_json(prompt)}")
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"'max_new_tokens' must be a whole number from 1 to {most}, not {describe_json(count)}")
        if not 1 <= count <= most:
            raise ValueError(f"'max_new_tokens' must be a whole number from 1 to {most}, not {count}")
    else:
        raise ValueError(f'an instance must be a prompt, e.g. "def ", or {{"prompt": "def ", "max_new_tokens": {most}}}, not {describe_json(instance)}')
    if not prompt:
        raise ValueError("the prompt is empty: the model needs one character at least to start from")
    return prompt, count


def describe_json(value: Any) -> str:
    """What a JSON value is, in words, without quoting it (it may be long)."""
    kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object", type(None): "null"}
    return kinds.get(type(value), f"a {type(value).__name__}")
