"""Named hyper-parameter sets, shared by the labs, the benchmarks, the sharding
run and the examples, so a setting found in one place is the same everywhere.

``PRESETS[name]`` is the preset of the optimizer registered under ``name`` in
:data:`natgrad.experiments.OPTIMIZERS`: what a lab or the optimizer race uses
before the learner changes anything.
"""

from __future__ import annotations

from typing import Any

# K-FAC as tuned on the digits autoencoder (250-300-step probes): the step count to a given
# loss hardly moves with the initial damping (1e-3..1e-1), factor_decay (0..0.95), the inverse
# interval (1..5) or factor updates every 2 steps; momentum through the quadratic model matters
# most. The step's cost is dominated by matrix products over the 1797 examples, so the
# quadratic model's curvature terms use a random 512 of them per step (its gradient terms use
# all) and the factors are refreshed every 2 steps: 33 -> 21 ms per step for about 3% more steps.
# (factor_decay is per step: 0.5 ** 0.5 per step is the tuned 0.5 per refresh every 2 steps.)
KFAC_BASE: dict[str, Any] = dict(
    fisher_type="true", pi_damping=True, adaptive_damping=True, damping_adaptation_interval=5,
    step_size_rule="quadratic", momentum=0.9, factor_decay=0.5**0.5, factor_update_steps=2, inverse_update_steps=5,
    curvature_examples=512)

# K-FAC per digits task, for the labs and the benchmark: the autoencoder keeps the preset it was
# tuned with; the classifier and the CNN use the class defaults (safeguarded quadratic-model step).
KFAC_TASK_PRESETS: dict[str, dict[str, Any]] = {
    "digits-autoencoder": KFAC_BASE, "digits-classifier": {}, "digits-cnn": {}}

# Shampoo: epsilon relative to the largest eigenvalue, roots every 10 steps, Adam grafting.
SHAMPOO_BASE: dict[str, Any] = dict(statistics="sum", epsilon=1e-4, epsilon_mode="relative",
                                    precondition_frequency=10, grafting="adam")

# The two families the Shampoo benchmark tunes over. "prototype": SHAMPOO_BASE with -1/4 per
# factor (Gupta et al. 2018). "half-power": -1/2 per factor (Morwani et al. 2025), EMA
# statistics and a shorter-memory Adam graft (beta2 0.99 for both).
SHAMPOO_CONFIGS: dict[str, dict[str, Any]] = {
    "prototype": dict(SHAMPOO_BASE, exponent_override=4),
    "half-power": dict(SHAMPOO_BASE, statistics="ema", beta2=0.99, graft_beta2=0.99, exponent_override=2),
}
# What the Shampoo benchmark adds to both families on each task (python -m natgrad.bench shampoo).
# Biases take the Adam graft's step (on 1500-step probes the steps to each target did not change,
# and a step is 5-15% cheaper). The CNN: kernels as (out, in*3*3) matrices (per-axis factors took
# about the same steps), and the head's 2048 inputs in blocks of 128 (blocks of 256 took more steps
# and were ~10% slower per step; 64 took more steps).
SHAMPOO_TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "digits-autoencoder": dict(skip_preconditioning_rank_lt=2),
    "digits-classifier": dict(skip_preconditioning_rank_lt=2),
    "digits-cnn": dict(skip_preconditioning_rank_lt=2, tensors="matrix", max_preconditioner_dim=128),
}
SHAMPOO_LR = 3e-3  # a learning rate that trains the digits autoencoder well with SHAMPOO_BASE

# SOAP (Vyas et al. 2024): the authors' betas (0.95, 0.95), eigenbases refreshed every 10 steps
# by one power iteration and QR, no weight decay (as the Adam it is compared with).
SOAP_BASE: dict[str, Any] = dict(betas=(0.95, 0.95), precondition_frequency=10, eigenbasis="qr", weight_decay=0.0)
SOAP_LR = 3e-3

# Muon (Jordan et al. 2024) on hidden matrices with Nesterov momentum 0.95 and 5 Newton-Schulz
# steps (torch.optim.Muon's defaults), AdamW at Adam's preset rate on biases and the output layer.
MUON_BASE: dict[str, Any] = dict(momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0, adam_lr=1e-3)
MUON_LR = 0.02

# Riemannian optimizers (geoopt) and their projected baselines on the manifold tasks, per task: the
# settings the lesson-7 labs start from. Probed over 200-400 steps: on stiefel-pca (k = 4) Riemannian SGD
# with lr 0.5 closes the gap in under 25 steps and Riemannian Adam with lr 0.1 in about 100; "Adam then
# re-orthonormalise" stalls near a gap of 1.2 for every lr from 0.003 to 0.1. On poincare-tree (float32)
# Riemannian Adam with lr 0.1 reaches a loss of 0.87 and mean rank 1.6 on the taxonomy in 400 steps;
# plain Adam with lr 0.01 moves a node out of the disk after 63 steps. On simplex-kl a natural-gradient lr
# of 1 is the full step (its gradient is p - q); 0.5 shows the path.
MANIFOLD_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "stiefel-pca": {"riemannian-sgd": dict(lr=0.5), "riemannian-adam": dict(lr=0.1),
                    "projected-adam": dict(lr=0.1), "adam": dict(lr=0.1)},
    "poincare-tree": {"riemannian-adam": dict(lr=0.1), "riemannian-sgd": dict(lr=1.0),
                      "projected-adam": dict(lr=0.01), "adam": dict(lr=0.01)},
    "simplex-kl": {"riemannian-sgd": dict(lr=0.5), "projected-sgd": dict(lr=0.1)},
}
# Sophia (Liu et al. 2023): the authors' betas and weight decay, the curvature estimate refreshed
# every 10 steps, Gauss-Newton-Bartlett (Sophia-G). lr and rho as tuned on the character model
# (lesson-chars) by python -m natgrad.bench sophia.
SOPHIA_BASE: dict[str, Any] = dict(estimator="gnb", betas=(0.965, 0.99), weight_decay=0.1, update_period=10)
SOPHIA_LR, SOPHIA_RHO = 1e-3, 0.3
# AdamW as in GPT-2-style pre-training (betas (0.9, 0.95), weight decay 0.1): Sophia's baseline.
ADAMW_BASE: dict[str, Any] = dict(beta1=0.9, beta2=0.95, weight_decay=0.1)
ADAMW_LR = 3e-3

PRESETS: dict[str, dict[str, Any]] = {
    "adam": dict(lr=1e-3),
    "sgd": dict(lr=0.1, momentum=0.9),
    "kfac": KFAC_BASE,
    "shampoo": dict(SHAMPOO_BASE, lr=SHAMPOO_LR),
    "soap": dict(SOAP_BASE, lr=SOAP_LR),
    "muon": dict(MUON_BASE, lr=MUON_LR),
    "riemannian-sgd": dict(lr=1e-2),
    "riemannian-adam": dict(lr=1e-3),
    "projected-sgd": dict(lr=1e-2),
    "projected-adam": dict(lr=1e-3),
    "adamw": dict(ADAMW_BASE, lr=ADAMW_LR),
    "sophia": dict(SOPHIA_BASE, lr=SOPHIA_LR, rho=SOPHIA_RHO),
}
