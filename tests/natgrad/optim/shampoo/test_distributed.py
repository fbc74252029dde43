"""DistributedShampoo on 1, 2 and 3 gloo ranks (spawned on 127.0.0.1 by
natgrad.distributed.launch) against single-process Shampoo, and the launcher's
handling of a rank that raises or hangs.

Tolerance: with identical gradients on every rank the all-gather only moves
numbers and each block is computed with the same kernels as in one process,
so parameters must be bit-identical (torch.equal). With sharded data the
all-reduced mean is (g0 + g1) / 2 on 2 ranks, which the reference reproduces
exactly too.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from natgrad.distributed import DistributedRunError, launch, live_ranks
from natgrad.optim.shampoo import blocks as sb
from natgrad.optim.shampoo.distributed import DistributedShampoo
from natgrad.optim.shampoo.optimizer import Shampoo
from natgrad.sharding import DATA_SIZE
from natgrad.tasks.digits import autoencoder_loss, digits_autoencoder, load_digits_tensors
from tests.conftest import ROOT
from tests.natgrad.optim.shampoo.test_optimizer import same_state

WIDTHS = (64, 48, 16, 48, 64)
KW = dict(lr=3e-3, precondition_frequency=3, start_preconditioning_step=2, max_preconditioner_dim=20,
          statistics="ema", beta2=0.99, momentum=0.5)
STEPS = 20


def _grads_for(model, X):
    model.zero_grad()
    autoencoder_loss(model(X), X).backward()
    return [p.grad.clone() for p in model.parameters()]


def _train_worker(rank: int, world_size: int, shard: bool) -> dict:
    X = load_digits_tensors()[0][:240]  # (240, 64)
    model = digits_autoencoder(seed=0, widths=WIDTHS)
    opt = DistributedShampoo(model.parameters(), average_gradients=shard, **KW)
    data = X[rank::world_size] if shard else X
    for _ in range(STEPS):
        opt.zero_grad()
        autoencoder_loss(model(data), data).backward()
        opt.step()
    out = dict(params=[p.detach().clone() for p in model.parameters()], report=opt.rank_report(),
               held=sum(sb.block_state_bytes(b) for p in model.parameters() for b in opt.state[p]["blocks"].values()))
    if rank == 0:  # the single-process reference, in the same process (same threads, same kernels)
        ref_model = digits_autoencoder(seed=0, widths=WIDTHS)
        ref = Shampoo(ref_model.parameters(), **KW)
        for _ in range(STEPS):
            if shard:
                per_rank = [_grads_for(ref_model, X[r::world_size]) for r in range(world_size)]
                for i, p in enumerate(ref_model.parameters()):
                    total = per_rank[0][i]
                    for g in per_rank[1:]:
                        total = total + g[i]
                    p.grad = total / world_size
            else:
                _grads_for(ref_model, X)
            ref.step()
        out["reference"] = [p.detach().clone() for p in ref_model.parameters()]
        out["reference_bytes"] = ref.preconditioner_bytes()
        out["all_blocks"] = sorted((b.key, b.name) for bl in ref.blocks().values() for b in bl)
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_distributed_equals_single_process(world_size):
    shard = world_size == 2  # 2 ranks also check the gradient all-reduce on sharded data
    results = launch(_train_worker, world_size, args=(shard,), timeout_s=60)
    ref = results[0]
    for res in results:
        for p, q in zip(res["params"], ref["reference"], strict=True):
            assert torch.equal(p, q)
    reports = [r["report"] for r in results]
    assert [r["rank"] for r in reports] == list(range(world_size))
    # memory: the shards add up exactly to the single-process total, and match what is allocated
    assert sum(r["preconditioner_bytes"] for r in reports) == ref["reference_bytes"]
    assert [r["preconditioner_bytes"] for r in reports] == [r["held"] for r in results]
    assert all(r["statistics_bytes"] + r["root_bytes"] == r["preconditioner_bytes"] for r in reports)
    # blocks are disjoint and cover everything
    owned = [(tuple(b["key"]), b["name"]) for r in reports for b in r["blocks"]]
    assert len(owned) == len(set(owned)) and sorted(owned) == ref["all_blocks"]
    if world_size > 1:
        assert all(r["blocks"] for r in reports) and all(r["comm_seconds"] > 0 for r in reports)


def test_greedy_assignment_is_deterministic_and_balanced():
    """Largest first to the least-loaded rank; costs sum(d^3): a 54, b 16, e 16 (tie: lower key first), d 5
    (diagonal: numel), c 2."""
    blocks = [sb.Block((0, 0), "a", (), (3, 3), False, torch.float32),
              sb.Block((1, 0), "b", (), (2, 2), False, torch.float32),
              sb.Block((2, 0), "c", (), (1, 1), False, torch.float32),
              sb.Block((3, 0), "d", (), (5,), True, torch.float32),
              sb.Block((4, 0), "e", (), (2, 2), False, torch.float32)]
    assert sb.assign_blocks(blocks, 2) == {(0, 0): 0, (1, 0): 1, (4, 0): 1, (3, 0): 1, (2, 0): 1}
    assert sb.assign_blocks(blocks, 1) == {b.key: 0 for b in blocks}
    # blocks placed before keep their rank and load: a (54) on 1, b (16) on 0; then e (16) -> 0, d (5) -> 0,
    # c (2) -> 0 (loads 16 -> 32 -> 37 -> 39, all below 54)
    placed = {(0, 0): 1, (1, 0): 0}
    assert sb.assign_blocks(blocks, 2, owners=placed) == {(0, 0): 1, (1, 0): 0, (4, 0): 0, (3, 0): 0, (2, 0): 0}
    assert placed == {(0, 0): 1, (1, 0): 0}  # not modified


def test_without_process_group_it_is_shampoo():
    X = load_digits_tensors()[0][:100]
    models = [digits_autoencoder(seed=0, widths=WIDTHS) for _ in range(2)]
    opts = [DistributedShampoo(models[0].parameters(), **KW), Shampoo(models[1].parameters(), **KW)]
    for model, opt in zip(models, opts, strict=True):
        for _ in range(5):
            opt.zero_grad()
            autoencoder_loss(model(X), X).backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True))
    assert opts[0].rank_report()["preconditioner_bytes"] == opts[1].preconditioner_bytes()


def _failing_worker(rank: int, world_size: int) -> None:
    X = load_digits_tensors()[0][:64]
    model = digits_autoencoder(seed=0, widths=WIDTHS)
    opt = DistributedShampoo(model.parameters(), start_preconditioning_step=1)
    for step in range(10):
        if rank == 1 and step == 3:
            raise ValueError("injected failure on rank 1")
        opt.zero_grad()
        autoencoder_loss(model(X), X).backward()
        opt.step()


def _hanging_worker(rank: int, world_size: int) -> None:
    X = load_digits_tensors()[0][:64]
    model = digits_autoencoder(seed=0, widths=WIDTHS)
    opt = DistributedShampoo(model.parameters(), start_preconditioning_step=1)
    for step in range(10):
        if rank == 1 and step == 2:
            time.sleep(120)  # hangs; rank 0 waits in the all-gather
        opt.zero_grad()
        autoencoder_loss(model(X), X).backward()
        opt.step()


def test_a_rank_that_raises_is_named():
    t0 = time.monotonic()
    # a generous timeout: two processes importing torch on a busy 2-core machine can take 20 s;
    # the failure must be reported as soon as it happens, not when the timeout runs out
    with pytest.raises(DistributedRunError, match=r"rank 1 failed: ValueError: injected failure on rank 1"):
        launch(_failing_worker, 2, timeout_s=120)
    assert time.monotonic() - t0 < 100
    assert live_ranks() == []


def test_a_rank_that_hangs_is_named_within_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(DistributedRunError, match=r"^rank 1 did not finish within \d+ s; rank 0 gave up"):
        launch(_hanging_worker, 2, timeout_s=45, collective_timeout_s=3)
    # rank 0 gives up 3 s into the hang and the launcher stops at once: well before the
    # 45 s timeout or the 120 s sleep (most of the time is two processes importing torch)
    assert time.monotonic() - t0 < 40
    assert live_ranks() == []


def test_example_script_trains_in_one_process():
    """natgrad.examples.shampoo_torchrun.train without a process group: one rank
    owns every block and the loss falls below the untrained model's."""
    from natgrad.examples.shampoo_torchrun import format_report, train

    X = load_digits_tensors()[0][:DATA_SIZE]
    start = autoencoder_loss(digits_autoencoder(seed=0)(X), X).item()
    from natgrad.examples.shampoo_torchrun import config

    report = train(0, 1, config(steps=20))
    assert report["shard_loss"] < 0.8 * start
    # four 128-wide weights cut in two 64-wide blocks each, four other weights, eight biases
    assert report["world_size"] == 1 and len(report["blocks"]) == 4 * 2 + 4 + 8
    assert "rank 0/1" in format_report(report)


def test_readme_torchrun_command_runs_two_ranks():
    """The README's single-machine torchrun command, with 2 ranks and 3 steps: each
    rank reports itself, and the blocks the ranks own add up to the whole model."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    torchrun = str(torchrun) if torchrun.exists() else shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on this Python's path")
    readme = (ROOT / "README.md").read_text()
    assert "torchrun --standalone --nproc-per-node=4 -m natgrad.examples.shampoo_torchrun" in readme
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "natgrad.examples.shampoo_torchrun",
                          "--steps", "3", "--timeout", "60"], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    owned = {int(r): int(n) for r, n in re.findall(r"rank (\d)/2: (\d+) blocks", out.stdout)}
    assert owned.keys() == {0, 1} and sum(owned.values()) == 4 * 2 + 4 + 8  # as in the one-process test above


# ------------------------------------------------------------------ add_param_group
ADD_KW = dict(lr=3e-3, precondition_frequency=2, start_preconditioning_step=1, max_preconditioner_dim=16)
ADD_STEPS = (6, 6)  # steps before and after the decoder's group is added


def _add_group_worker(rank: int, world_size: int) -> dict:
    """Rank r trains the encoder of a 64-48-16-48-64 autoencoder on its shard (averaged
    gradients); the decoder, frozen until then, joins as a second group (its own lr) after
    ADD_STEPS[0] steps. Rank 0 also runs single-process Shampoo on the mean of the
    shard gradients, so both see the same numbers."""
    X = load_digits_tensors()[0][:240]  # (240, 64)

    def train(distributed: bool):
        model = digits_autoencoder(seed=0, widths=(64, 48, 16, 48, 64))
        enc, dec = list(model[:3].parameters()), list(model[3:].parameters())
        for p in dec:
            p.requires_grad_(False)
        opt = (DistributedShampoo(enc, average_gradients=True, **ADD_KW) if distributed else Shampoo(enc, **ADD_KW))
        owners_before, state_before = None, None
        for t in range(sum(ADD_STEPS)):
            if t == ADD_STEPS[0]:
                if distributed:
                    owners_before = dict(opt.assignment())
                state_before = {i: sb.copy_to(opt.state[p], "cpu") for i, p in enumerate(enc)}
                for p in dec:
                    p.requires_grad_(True)
                opt.add_param_group({"params": dec, "lr": 2e-3})
                assert same_state(state_before, {i: opt.state[p] for i, p in enumerate(enc)})  # nothing touched
            opt.zero_grad()
            if distributed:
                data = X[rank::world_size]
                autoencoder_loss(model(data), data).backward()
            else:
                live = [p for p in model.parameters() if p.requires_grad]
                shards = [torch.autograd.grad(autoencoder_loss(model(X[r::world_size]), X[r::world_size]), live)
                          for r in range(world_size)]
                for i, p in enumerate(live):
                    total = shards[0][i]
                    for g in shards[1:]:
                        total = total + g[i]
                    p.grad = total / world_size
            opt.step()
        return model, opt, owners_before

    model, opt, owners_before = train(distributed=True)
    out = dict(params=[p.detach().clone() for p in model.parameters()], owners_before=owners_before,
               owners_after=dict(opt.assignment()), report=opt.rank_report())
    # a checkpoint restores the owners: a fresh optimizer built with both groups at once
    # (which would place the blocks differently) continues exactly like the original
    fresh = digits_autoencoder(seed=0, widths=(64, 48, 16, 48, 64))
    fresh.load_state_dict(model.state_dict())
    resumed = DistributedShampoo([{"params": fresh[:3].parameters()}, {"params": fresh[3:].parameters(), "lr": 2e-3}],
                                 average_gradients=True, **ADD_KW)
    out["fresh_owners"] = dict(resumed.assignment())
    resumed.load_state_dict(opt.state_dict())
    out["resumed_owners"] = dict(resumed.assignment())
    data = X[rank::world_size]
    for m, o in ((model, opt), (fresh, resumed)):
        for _ in range(3):
            o.zero_grad()
            autoencoder_loss(m(data), data).backward()
            o.step()
    out["resumed_equal"] = all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))
    if rank == 0:
        ref_model, ref, _ = train(distributed=False)
        out["reference"] = [p.detach().clone() for p in ref_model.parameters()]
        out["reference_bytes"] = ref.preconditioner_bytes()
    return out


def test_add_param_group_keeps_owners_and_matches_single_process():
    """DistributedShampoo.add_param_group on 2 ranks: existing blocks keep their owner (and
    so their statistics), the new group's blocks are spread over both ranks, and training
    goes on exactly as single-process Shampoo given the same gradients."""
    results = launch(_add_group_worker, 2, timeout_s=90)
    ref = results[0]
    for res in results:
        for p, q in zip(res["params"], ref["reference"], strict=True):
            assert torch.equal(p, q)
        assert res["owners_before"].items() <= res["owners_after"].items()  # no block moved
    assert results[0]["owners_after"] == results[1]["owners_after"]
    new = set(ref["owners_after"]) - set(ref["owners_before"])
    assert new and {ref["owners_after"][k] for k in new} == {0, 1}
    reports = [r["report"] for r in results]
    assert sum(r["preconditioner_bytes"] for r in reports) == ref["reference_bytes"]
    # checkpoints carry the owners
    assert ref["fresh_owners"] != ref["owners_after"]  # the check below is not vacuous
    assert all(r["resumed_owners"] == r["owners_after"] and r["resumed_equal"] for r in results)
