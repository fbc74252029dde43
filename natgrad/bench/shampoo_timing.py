"""Time per training iteration of Shampoo and Adam on one task, side by side
(:func:`natgrad.bench.timing.side_by_side`), and on the digits autoencoder also
pytorch-optimizer's ``Shampoo`` next to ours configured to do the same work."""

from __future__ import annotations

from collections.abc import Callable

import torch

from natgrad.bench.timing import side_by_side
from natgrad.experiments import make_task
from natgrad.presets import SHAMPOO_BASE
from natgrad.tasks.base import Task
from natgrad.tasks.digits import autoencoder_loss, digits_autoencoder, load_digits_tensors

__all__ = ["SAME_WORK", "SAME_WORK_CONFIG", "optimizers_for_timing", "time_per_step"]

AUTOENCODER = "digits-autoencoder"  # the task on which pytorch-optimizer's Shampoo is timed too


def _their_shampoo() -> tuple[Callable | None, str]:
    """pytorch-optimizer's Shampoo class (an optional test oracle) and its version, or (None, why)."""
    try:
        from pytorch_optimizer import Shampoo as TheirShampoo
    except ImportError:
        return None, "not installed"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return TheirShampoo, f"pytorch_optimizer {version('pytorch_optimizer')}"
    except PackageNotFoundError:
        return TheirShampoo, "pytorch_optimizer"


SAME_WORK = "natgrad Shampoo, same work"  # configured to do what pytorch-optimizer's Shampoo does
# pytorch-optimizer's Shampoo(preconditioning_compute_steps=10, matrix_eps=1e-4) in our terms
# (tests/natgrad/bench/test_shampoo.py checks that the two take the same steps)
SAME_WORK_CONFIG = dict(beta1=0.0, grafting=None, statistics="sum", epsilon=1e-4, epsilon_mode="absolute",
                        precondition_frequency=10)


def optimizers_for_timing(lr: float, their_lr: float = 1e-3, settings: dict | None = None, adam_lr: float | None = None,
                          theirs: bool = True) -> dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]]:
    """Factories of the optimizers timed side by side.

    "natgrad Shampoo" is ours with ``settings`` (default :data:`SHAMPOO_BASE`: Adam
    grafting, first moment with beta1 0.9, relative epsilon) at ``lr``; "Adam" is
    ``torch.optim.Adam`` at ``adam_lr`` (default ``lr``).

    With ``theirs`` and pytorch-optimizer installed, also its ``Shampoo``, configured
    like ours where it can be: roots every 10 steps (``preconditioning_compute_steps``),
    statistics summed from ``matrix_eps * I`` with ``matrix_eps = 1e-4``, exponent
    -1/4 for matrices, no momentum. It has no grafting and no first moment, computes
    roots by SVD, and gives biases a full d x d factor where ours keeps a diagonal.
    Without grafting its steps are larger: it diverges on the digits autoencoder from
    lr 1e-2, so it gets its own ``their_lr``. To compare the implementations on equal
    work, :data:`SAME_WORK` is ours configured as theirs: no grafting, no first
    moment, absolute epsilon 1e-4 (roots of ``S + 1e-4 I`` as theirs), summed
    statistics, roots every 10 steps, at ``their_lr``.
    """
    from natgrad.optim import Shampoo

    settings = SHAMPOO_BASE if settings is None else settings
    out = {
        "Adam": lambda m: torch.optim.Adam(m.parameters(), lr=lr if adam_lr is None else adam_lr),
        "natgrad Shampoo": lambda m: Shampoo(m.named_parameters(), **(dict(settings) | {"lr": lr})),
    }
    their_cls, _ = _their_shampoo()
    if theirs and their_cls is not None:
        out["pytorch-optimizer Shampoo"] = lambda m: their_cls(m.parameters(), lr=their_lr,
                                                               preconditioning_compute_steps=10, matrix_eps=1e-4)
        out[SAME_WORK] = lambda m: Shampoo(m.named_parameters(), lr=their_lr, start_preconditioning_step=1,
                                           **SAME_WORK_CONFIG)
    return out


def time_per_step(blocks: int = 20, block: int = 10, warmup_blocks: int = 2, lr: float = 3e-3,
                  their_lr: float = 1e-3, widths: tuple[int, ...] | None = None, device: str = "cpu",
                  threads: int = 1, *, task: str = AUTOENCODER, settings: dict | None = None,
                  adam_lr: float | None = None, batch_size: int | None = None) -> dict:
    """Median seconds per training iteration (forward, backward, step) of each
    optimizer in :func:`optimizers_for_timing`, side by side
    (:func:`natgrad.bench.timing.side_by_side`) on ``task`` (the registry's; the
    autoencoder with other layer ``widths`` if given) with mini-batches of
    ``batch_size`` (None: full batch). pytorch-optimizer's Shampoo is timed on the
    autoencoder only.

    Returns :func:`~natgrad.bench.timing.side_by_side`'s numbers plus ``task``,
    ``batch_size``, ``theirs`` (version, "not installed" or "not timed"), ``lr``,
    ``adam_lr``, ``their_lr``, ``settings``, ``ours_vs_adam``, ``ours_vs_theirs``
    and ``same_work_vs_theirs`` (ratios of medians; the last two None without theirs).
    """
    dev = torch.device(device)
    if widths is not None:
        X, _ = load_digits_tensors(device=device)

        def make() -> Task:
            return Task(digits_autoencoder(seed=0, widths=widths).to(device), X, X, autoencoder_loss, "gaussian")
    else:
        def make() -> Task:
            return make_task(task, 0, dev, torch.float32)

    with_theirs = task == AUTOENCODER
    t = side_by_side(optimizers_for_timing(lr, their_lr, settings, adam_lr, theirs=with_theirs), make, blocks=blocks,
                     block=block, warmup_blocks=warmup_blocks, batch_size=batch_size, threads=threads)
    med = t["seconds_per_step"]
    theirs = med.get("pytorch-optimizer Shampoo")
    return dict(t, task=task, batch_size=batch_size, theirs=_their_shampoo()[1] if with_theirs else "not timed",
                lr=lr, adam_lr=lr if adam_lr is None else adam_lr, their_lr=their_lr,
                settings=dict(SHAMPOO_BASE if settings is None else settings),
                ours_vs_adam=med["natgrad Shampoo"] / med["Adam"],
                ours_vs_theirs=None if theirs is None else med["natgrad Shampoo"] / theirs,
                same_work_vs_theirs=None if theirs is None else med[SAME_WORK] / theirs)
