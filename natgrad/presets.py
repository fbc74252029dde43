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
KFAC_BASE: dict[str, Any] = dict(
    fisher_type="true", pi_damping=True, adaptive_damping=True, damping_adaptation_interval=5,
    step_size_rule="quadratic", momentum=0.9, factor_decay=0.5, factor_update_steps=2, inverse_update_steps=5,
    curvature_examples=512)

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
SHAMPOO_LR = 3e-3  # a learning rate that trains the digits autoencoder well with SHAMPOO_BASE

# SOAP (Vyas et al. 2024): the authors' betas (0.95, 0.95), eigenbases refreshed every 10 steps
# by one power iteration and QR, no weight decay (as the Adam it is compared with).
SOAP_BASE: dict[str, Any] = dict(betas=(0.95, 0.95), precondition_frequency=10, eigenbasis="qr", weight_decay=0.0)
SOAP_LR = 3e-3

# Muon (Jordan et al. 2024) on hidden matrices with Nesterov momentum 0.95 and 5 Newton-Schulz
# steps (torch.optim.Muon's defaults), AdamW at Adam's preset rate on biases and the output layer.
MUON_BASE: dict[str, Any] = dict(momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0, adam_lr=1e-3)
MUON_LR = 0.02

PRESETS: dict[str, dict[str, Any]] = {
    "adam": dict(lr=1e-3),
    "sgd": dict(lr=0.1, momentum=0.9),
    "kfac": KFAC_BASE,
    "shampoo": dict(SHAMPOO_BASE, lr=SHAMPOO_LR),
    "soap": dict(SOAP_BASE, lr=SOAP_LR),
    "muon": dict(MUON_BASE, lr=MUON_LR),
}
