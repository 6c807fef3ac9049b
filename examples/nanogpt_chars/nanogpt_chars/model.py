"""The model of nanogpt_chars: a GPT in the shape of karpathy/nanoGPT's `model.py`.

Token and position embeddings, `n_layer` pre-LayerNorm blocks of causal self-attention
(`F.scaled_dot_product_attention`) and an MLP, a final LayerNorm and a head whose weights
are the token embedding's (weight tying). Written anew, learning from nanoGPT's: the same
parameters, initialization and arithmetic, so that the two train at the same cost
(`benchmarks/nanogpt_chars.py`).

Generation keeps each layer's keys and values (`KVCache`) while the text fits in the
block, so that a new character costs one position's forward rather than the whole
block's; past the block it crops the text to its last `block_size` characters and runs the
block again, as nanoGPT's `generate` does.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """The model's shape (the configuration's `model` section, and the corpus's vocabulary).

    Attributes:
        vocab_size: distinct characters of the corpus.
        block_size: characters of context, the longest sequence the model reads.
        n_layer: transformer blocks.
        n_head: attention heads per block; they divide n_embd.
        n_embd: width of the embeddings and of every block.
        dropout: probability of dropping an activation in training; 0 turns dropout off.
        bias: whether the Linear and LayerNorm layers have biases.
    """

    vocab_size: int
    block_size: int = 128
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 192
    dropout: float = 0.0
    bias: bool = False


class KVCache:
    """Each layer's keys and values of the positions a generation has read so far."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def length(self) -> int:
        """Positions held."""
        return self.layers[0][0].size(2) if self.layers else 0

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append a layer's keys and values of new positions (B, heads, T, head size);
        return all its keys and values so far."""
        if layer == len(self.layers):
            self.layers.append((keys, values))
        else:
            past_keys, past_values = self.layers[layer]
            self.layers[layer] = (torch.cat((past_keys, keys), 2), torch.cat((past_values, values), 2))
        return self.layers[layer]


class LayerNorm(nn.Module):
    """LayerNorm whose bias is optional (nn.LayerNorm's is all or nothing with its weight)."""

    def __init__(self, width: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which each position sees itself and those before it."""

    def __init__(self, config: GPTConfig, index: int):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.index = index  # the block's place, which names its entry in a KVCache

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        batch, length, width = x.size()
        q, k, v = (part.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2) for part in self.c_attn(x).split(self.n_embd, 2))
        if cache is not None:
            k, v = cache.extend(self.index, k, v)
        dropout = self.dropout if self.training else 0.0
        if k.size(2) == length:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # New positions after cached ones: each sees every cached position, and the new ones up to itself.
            mask = torch.ones(length, k.size(2), dtype=torch.bool, device=x.device).tril(k.size(2) - length)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(batch, length, width)))


class MLP(nn.Module):
    """Two Linear layers, four times as wide inside, with GELU between them."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Attention then MLP, each on a LayerNorm of its input and added back to it (pre-LN)."""

    def __init__(self, config: GPTConfig, index: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(config, index)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Characters in, the logits of each position's next character out."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(Block(config, index) for index in range(config.n_layer)),
                "ln_f": LayerNorm(config.n_embd, config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one matrix reads and writes characters
        self.apply(initialize)
        # GPT-2's scaled initialization of the projections that add to the residual stream.
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Return the logits (B, T, vocab_size) of the character after each of `idx`'s (B, T).

        Args:
            idx: character ids; T at most block_size, counting the positions `cache` holds.
            cache: the keys and values of the positions before `idx`'s, which it receives
                `idx`'s too; None reads `idx` from position 0 and keeps nothing.
        """
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x, cache)
        return self.lm_head(self.transformer.ln_f(x))

    def count_parameters(self) -> int:
        """Parameters, the tied head counted once, the position embedding left out (as nanoGPT counts)."""
        return sum(parameter.numel() for parameter in self.parameters()) - self.transformer.wpe.weight.numel()


def initialize(module: nn.Module) -> None:
    """nanoGPT's initialization: normal(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def generate(
    model: GPT, prompts: torch.Tensor, steps: int, temperature: float, top_k: int | None, generators: list[torch.Generator]
) -> torch.Tensor:
    """Continue each of `prompts` (B, T) by `steps` characters; return them (B, steps).

    Call it in eval mode, without gradients. Each row draws from its own generator, so that
    a prompt's continuation does not depend on the others beside it.

    Args:
        model: the model.
        prompts: character ids of prompts of one length (only the last block_size count).
        steps: characters to add.
        temperature: 0 takes the likeliest character; otherwise the logits are divided by it
            before sampling (below 1: more conservative; above: more varied).
        top_k: sample among the k likeliest characters only; None among all.
        generators: one per row, for its draws (unused when temperature is 0).
    """
    block_size = model.config.block_size
    text = prompts[:, -block_size:]
    cache = KVCache()
    logits = model(text, cache)[:, -1]
    chosen = []
    for step in range(steps):
        following = choose_characters(logits, temperature, top_k, generators)
        chosen.append(following)
        if step + 1 == steps:
            break
        text = torch.cat((text, following[:, None]), 1)
        if text.size(1) <= block_size:
            logits = model(following[:, None], cache)[:, -1]
        else:  # the window slides: every position moves, and what the cache holds with it
            text = text[:, -block_size:]
            cache = None
            logits = model(text)[:, -1]
    return torch.stack(chosen, 1)


def choose_characters(logits: torch.Tensor, temperature: float, top_k: int | None, generators: list[torch.Generator]) -> torch.Tensor:
    """Each row's next character (B,) from its logits (B, vocab_size): the likeliest at
    temperature 0, else one drawn from the row's generator."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probabilities = F.softmax(logits, -1)
    rows = [torch.multinomial(row.cpu(), 1, generator=generator) for row, generator in zip(probabilities, generators)]
    return torch.cat(rows).to(logits.device)
