r"""A tiny character-level transformer trained on the course's own lesson text.

Usage::

    from natgrad.tasks.chars import chars_task, generate
    task = chars_task(seed=0)                  # Task: model, (N, T) inputs, (N, T) targets
    x, y = task.batch(16, torch.Generator().manual_seed(0))
    loss = task.loss(x, y)                     # mean cross-entropy over the 16 * 32 characters
    text = generate(task.model, "The Fisher", 200, generator=torch.Generator().manual_seed(1))

The text is every ``lessons/*/lesson.md`` of this repository, read when the task
is built (nothing is downloaded), joined in file order. Characters are mapped
to a fixed vocabulary: newline, the 95 printable ASCII characters and one
"other" symbol for everything else, so the model's shape does not depend on
the text. The data set is the text cut into non-overlapping windows of
``context + 1`` characters; the input is a window's first ``context``
characters and the target the same window shifted by one.

The model is a decoder-only transformer in the style of GPT-2 (Radford et al.
2019): token and learned position embeddings, pre-LayerNorm blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm and a linear head
to the vocabulary. Attention is written out (softmax of masked
:math:`QK^\top/\sqrt{d_h}`) rather than fused, so second derivatives exist
everywhere (Sophia-H's Hessian-vector products need them). Outputs are logits
of shape (B, T, V) with a softmax likelihood per position; the loss is the
mean over all B T positions of :math:`-\log p(y_{b,t} \mid x_{b,\le t})`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from natgrad.tasks.base import Task

LESSONS_DIR = Path(__file__).resolve().parents[2] / "lessons"
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127)) + "\ufffd"  # last: every other character
OTHER = len(VOCAB) - 1
# Small enough that a few hundred steps take seconds on one CPU thread (about 33k parameters)
CONTEXT = 32
WIDTH = 32
HEADS = 4
LAYERS = 2
BATCH = 16  # the mini-batch size (sequences) the task is meant for: 512 characters per step


@lru_cache(maxsize=4)
def lesson_text(folder: str | None = None) -> str:
    """Every ``lesson.md`` under ``folder`` (default: this repository's ``lessons/``), sorted by
    path, joined with blank lines. Raises ``FileNotFoundError`` when there is none."""
    root = Path(folder) if folder else LESSONS_DIR
    files = sorted(root.glob("*/lesson.md"))
    if not files:
        raise FileNotFoundError(f"no lessons/*/lesson.md under {root}")
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


_INDEX = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> torch.Tensor:
    """Character indices into :data:`VOCAB` (int64, (len(text),)); unknown characters -> :data:`OTHER`."""
    return torch.tensor([_INDEX.get(c, OTHER) for c in text], dtype=torch.int64)


def decode(indices) -> str:
    return "".join(VOCAB[int(i)] for i in indices)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)  # (B, T, D) each
        q, k, v = (t.reshape(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.heads)  # (B, H, T, T)
        att = torch.softmax(att.masked_fill(mask[:T, :T], float("-inf")), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharTransformer(nn.Module):
    """Decoder-only transformer over :data:`VOCAB` (module docstring). ``forward(x)``:
    (B, T) int64 with T <= ``context`` -> logits (B, T, V)."""

    def __init__(self, vocab: int = len(VOCAB), context: int = CONTEXT, width: int = WIDTH, heads: int = HEADS,
                 layers: int = LAYERS):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer("mask", torch.triu(torch.ones(context, context, dtype=torch.bool), 1), persistent=False)
        for m in self.modules():  # GPT-2's initialisation: N(0, 0.02) weights, zero biases
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if T > self.context:
            raise ValueError(f"sequence of {T} characters is longer than the context of {self.context}")
        h = self.tok(x) + self.pos(torch.arange(T, device=x.device))
        for block in self.blocks:
            h = block(h, self.mask)
        return self.head(self.ln(h))


def char_transformer(seed: int = 0, **sizes) -> CharTransformer:
    """:class:`CharTransformer` initialised from ``torch.manual_seed(seed)`` in a forked RNG
    state (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CharTransformer(**sizes)


def sequence_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position: logits (..., V), targets (...) int64."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def windows(text: str, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``context + 1`` characters: inputs and targets, (N, context) each."""
    ids = encode(text)
    n = (len(ids) - 1) // context
    if n < 1:
        raise ValueError(f"the text has {len(ids)} characters; need more than the context of {context}")
    ids = ids[: n * context + 1]
    return ids[:-1].reshape(n, context), ids[1:].reshape(n, context)


def chars_task(seed: int = 0, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
               context: int = CONTEXT, width: int = WIDTH, heads: int = HEADS, layers: int = LAYERS) -> Task:
    """The lesson text as (N, ``context``) windows and a :func:`char_transformer`; softmax likelihood
    over the (B, T, V) logits, :func:`sequence_cross_entropy` loss. Meant for mini-batches of
    :data:`BATCH` sequences."""
    for name, value in (("context", context), ("width", width), ("heads", heads), ("layers", layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if width % heads:
        raise ValueError(f"width ({width}) must be a multiple of heads ({heads}): each head takes width / heads")
    X, Y = windows(lesson_text(), context)
    model = char_transformer(seed, context=context, width=width, heads=heads, layers=layers)
    return Task(model.to(device=device, dtype=dtype), X.to(device), Y.to(device), sequence_cross_entropy, "softmax")


@torch.no_grad()
def generate(model: CharTransformer, prompt: str, length: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> str:
    """``prompt`` followed by ``length`` characters sampled one at a time from the model
    (softmax of the last position's logits / ``temperature``; 0 takes the most likely). The
    model sees at most its last ``context`` characters. ``generator`` (a CPU generator)
    makes the sample repeatable on any device."""
    if length < 0 or temperature < 0:
        raise ValueError("length and temperature must be >= 0")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = encode(prompt or "\n").tolist()
    for _ in range(length):
        x = torch.tensor([ids[-model.context:]], dtype=torch.int64, device=device)
        logits = model(x)[0, -1].double().cpu()  # (V,)
        if temperature == 0:
            ids.append(int(logits.argmax()))
        else:
            p = torch.softmax(logits / temperature, dim=-1)
            ids.append(int(torch.multinomial(p, 1, generator=generator)))
    model.train(was_training)
    return decode(ids)


def sample_text(model_state: dict[str, torch.Tensor], prompt: str = "The ", length: int = 200,
                temperature: float = 0.8, seed: int = 0, **sizes) -> str:
    """:func:`generate` from a trained model's ``state_dict`` (e.g. ``Trajectory.model_state`` of a
    run with ``keep_model``), rebuilt on the CPU in float32 with the given sizes (default: the task's)."""
    model = CharTransformer(**sizes)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model_state.items()})
    return generate(model, prompt, length, temperature, torch.Generator().manual_seed(seed))
