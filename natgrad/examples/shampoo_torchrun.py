"""Train the digits autoencoder with DistributedShampoo and print per-rank reports.

Under torchrun (each process prints its own report)::

    torchrun --standalone --nproc-per-node=2 -m natgrad.examples.shampoo_torchrun --steps 50

Without torchrun, spawning the ranks with :func:`natgrad.distributed.launch`::

    python -m natgrad.examples.shampoo_torchrun --world-size 2 --steps 50

Multi-node commands: see :mod:`natgrad.distributed`. Data parallel: rank ``r``
takes digits ``r, r + W, r + 2W, ...`` and the gradients are averaged
(``average_gradients=True``), so every rank applies the same update; the
Shampoo blocks (``--max-preconditioner-dim`` cuts the 128-wide layers) are
spread over the ranks.
"""

from __future__ import annotations

import argparse

import torch.distributed as dist

from natgrad.distributed import init_from_env, launch
from natgrad.presets import SHAMPOO_BASE
from natgrad.sharding import ShardingConfig, train_rank


def config(steps: int = 50, lr: float = 3e-3, max_preconditioner_dim: int = 64, precondition_frequency: int = 10,
           device: str = "cpu") -> ShardingConfig:
    hparams = SHAMPOO_BASE | {"lr": lr, "precondition_frequency": precondition_frequency}
    return ShardingConfig(world_size=1, steps=steps, max_preconditioner_dim=max_preconditioner_dim,
                          hparams=tuple(sorted(hparams.items())), device=device)


def train(rank: int, world_size: int, cfg: ShardingConfig) -> dict:
    """This rank's part of the run (:func:`natgrad.sharding.train_rank`), without the parameters."""
    report = train_rank(rank, world_size, cfg)
    report.pop("params")
    return report


def format_report(r: dict) -> str:
    names = ", ".join(f"{b['name']}{list(b['shape'])}" for b in r["blocks"])
    return (f"rank {r['rank']}/{r['world_size']}: {len(r['blocks'])} blocks, statistics {r['statistics_bytes']} B, "
            f"roots {r['root_bytes']} B, root time {r['root_seconds']:.3f} s, communication "
            f"{r['comm_seconds']:.3f} s, {r['steps']} steps in {r['seconds']:.2f} s, shard loss "
            f"{r['shard_loss']:.4f}\n    blocks: {names}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-preconditioner-dim", type=int, default=64)
    parser.add_argument("--precondition-frequency", type=int, default=10)
    parser.add_argument("--world-size", type=int, default=2, help="ranks to spawn when not under torchrun")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a hung run is ended")
    a = parser.parse_args(argv)
    cfg = config(a.steps, a.lr, a.max_preconditioner_dim, a.precondition_frequency)
    rank, world_size = init_from_env(timeout_s=a.timeout)
    if world_size > 1:  # under torchrun: this process is one rank
        try:
            print(format_report(train(rank, world_size, cfg)), flush=True)
            # every rank reaches here before any tears the group down: a rank that left while
            # another still used the store (rank 0 hosts it) could abort at exit
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return
    for report in launch(train, a.world_size, (cfg,), timeout_s=a.timeout):
        print(format_report(report))


if __name__ == "__main__":
    main()
