"""Labs of the Shampoo lesson: the exponent slider, Shampoo vs K-FAC vs Adam, memory."""

from __future__ import annotations

from fractions import Fraction

import streamlit as st

from course.lessons import Lab
from natgrad import costs
from natgrad.bench import kfac as kfac_bench
from natgrad.bench import shampoo as shampoo_bench
from natgrad.experiments import Spec, Trajectory
from natgrad.presets import KFAC_BASE, SHAMPOO_BASE
from natgrad.tasks.quadratic import kron_quadratic
from natgrad.viz import cost_figure, loss_figure, rank_bars_figure
from views.labs.common import bench_results, device, report_status, run_all, settings_form, show_runs
from views.labs.figures import chart, with_previous
from views.labs.kfac import LOG_CHOICES

EXPONENTS = [8, 6, 5, 4, 3, 2.5, 2]  # p: every Kronecker factor gets X^(-1/p)
MARKED = {4: "Gupta et al. 2018", 2: "Morwani et al. 2025"}
STEP_CHOICES = [50, 100, 200, 400]
SKEWS = [1, 3, 10, 30, 100, 300, 1000]
QUADRATIC_SIZE = 16  # W is 16 x 16
BLOCK_CHOICES = [128, 256, 512, 1024, 2048, 4096, 8192]
MAX_BLOCKS = 200_000  # assigning more blocks to GPUs one by one takes too long for a page


def exponent_label(p: float) -> str:
    """``-1/p`` as a fraction: 4 -> "-1/4", 2.5 -> "-2/5"."""
    f = Fraction(1) / Fraction(str(p))
    return f"-{f.numerator}/{f.denominator}"


def _exponent_option(p: float) -> str:
    return f"{exponent_label(p)} ({MARKED[p]})" if p in MARKED else exponent_label(p)


# ----------------------------------------------------------------- why -1/4
def _quarter_settings() -> dict | None:
    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(
            p=c1.select_slider("per-factor exponent", EXPONENTS, value=8, format_func=_exponent_option, key="wq-p", bind="query-params",
                               help="Each Kronecker factor X of Shampoo's preconditioner is raised to this power. "
                                    "−1/4 and −1/2 always run; a third line shows your choice."),
            steps=c1.select_slider("steps", STEP_CHOICES, value=200, key="wq-steps", bind="query-params",
                                   help="How many updates every run makes."),
            skew=c2.select_slider("skew κ of the quadratic", SKEWS, value=100, key="wq-skew", bind="query-params",
                                  help="The condition number of each factor A and B of the quadratic: how much "
                                       "more curved its steepest direction is than its flattest. κ = 1: no skew."),
            lr_digits=c3.select_slider("learning rate, autoencoder", LOG_CHOICES, value=3e-3, key="wq-lrd", bind="query-params",
                                       help="The step size of every run on the digits autoencoder."),
            lr_quad=c3.select_slider("learning rate, quadratic", LOG_CHOICES, value=3e-1, key="wq-lrq", bind="query-params",
                                     help="The step size of every run on the quadratic."))

    return settings_form("wq", draw)[0]


def _exponent_runs(s: dict, task: str, lr: float, task_options: dict | None = None) -> dict[str, Trajectory]:
    chosen = [] if s["p"] in (4, 2) else [s["p"]]
    specs = {}
    for p in chosen + [4, 2]:
        label = f"exponent {exponent_label(p)}" + (" (your choice)" if p in chosen else "")
        specs[label] = Spec.make(SHAMPOO_BASE | {"lr": lr, "exponent_override": p}, task_options, task=task,
                                 optimizer="shampoo", steps=s["steps"], device=device())
    specs["Adam"] = Spec.make({"lr": lr}, task_options, task=task, optimizer="adam", steps=s["steps"],
                              device=device())
    trajs = run_all(specs)
    for label, t in trajs.items():
        report_status(f"{label} on {task}", t)
    return trajs


def why_quarter(lab: Lab) -> None:
    st.markdown(
        "Shampoo gives every Kronecker factor the power $-1/p$. Gupta, Koren & Singer (2018, arXiv 1802.09568) "
        "bound full-matrix AdaGrad's $S=\\sum_i g_i g_i^\\top$ by $r\\,(R^{1/2}\\otimes L^{1/2})$ (columns stacked); "
        "AdaGrad's power $-1/2$ applied to that bound is $R^{-1/4}\\otimes L^{-1/4}$, so $-1/4$ per factor is $-1/2$ "
        "overall. With $-1/2$ per factor the step is $R^{-1/2}\\otimes L^{-1/2} = (R^{1/2}\\otimes L^{1/2})^{-1}$, "
        "the inverse of the bound itself; Morwani et al. (2025, arXiv 2406.17748) argue for it because "
        "$R\\otimes L$ approximates $S$ up to a scalar. Every Shampoo run below grafts Adam's step length "
        "layer by layer, so the lines differ only in the direction each exponent chooses."
    )
    s = _quarter_settings()
    if s is None:
        return
    quad_options = {"m": QUADRATIC_SIZE, "n": QUADRATIC_SIZE, "cond_left": float(s["skew"]),
                    "cond_right": float(s["skew"])}
    digits = _exponent_runs(s, "digits-autoencoder", s["lr_digits"])
    quad = _exponent_runs(s, "kron-quadratic", s["lr_quad"], quad_options)
    shown = with_previous("wq", {f"{task}: {k}": v for task, runs in (("digits", digits), ("quad", quad))
                                 for k, v in runs.items()},
                          {"exponent": exponent_label(s["p"]), "steps": s["steps"], "skew κ": s["skew"],
                           "autoencoder learning rate": s["lr_digits"], "quadratic learning rate": s["lr_quad"]})
    pick = {"digits": {}, "quad": {}}
    for label, t in shown.items():
        task, run = label.split(": ", 1)
        pick[task][run] = t
    c1, c2 = st.columns(2)
    chart(loss_figure(pick["digits"], "step", "digits autoencoder"), "wq-fig-digits", c1)
    chart(loss_figure(pick["quad"], "step", "Kronecker quadratic"), "wq-fig-quad", c2)
    st.table([{"run": label, "digits: final loss": f"{digits[label].final_loss:.4g}",
               "quadratic: final loss": f"{quad[label].final_loss:.4g}"} for label in digits],
             hide_index=True)
    cond = kron_quadratic(**quad_options).condition_number()
    quarter, half = quad["exponent -1/4"].final_loss, quad["exponent -1/2"].final_loss
    st.caption(
        f"The quadratic is $\\mathcal{{L}}(W)=\\tfrac12\\operatorname{{tr}}((W-W^\\star)^\\top A(W-W^\\star)B)$ with "
        f"{QUADRATIC_SIZE}x{QUADRATIC_SIZE} $W$, its Hessian $B\\otimes A$ has condition number {cond:,.0f} "
        f"(computed from $A$ and $B$), and random rotations hide that curvature from Adam's diagonal. "
        f"Its gradient is $G = A(W-W^\\star)B$, so while the error is spread evenly Shampoo's statistics "
        f"$\\sum GG^\\top$ and $\\sum G^\\top G$ behave like the squares of $A$ and $B$: $-1/2$ per factor then "
        f"undoes the curvature roughly as Newton's method would, $-1/4$ only its square root. "
        f"Here $-1/2$ ended at {half:.3g} and $-1/4$ at {quarter:.3g}. At κ = 1 there is no curvature to undo."
    )


# ------------------------------------------------------- Shampoo vs K-FAC
def _versus_settings() -> dict | None:
    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(steps=c1.select_slider("steps", STEP_CHOICES, value=200, key="sk-steps", bind="query-params",
                                           help="How many updates each of the three makes."),
                    shampoo_lr=c2.select_slider("Shampoo learning rate", LOG_CHOICES, value=3e-3, key="sk-slr", bind="query-params",
                                                help="Shampoo's step size (its step length is grafted from Adam)."),
                    adam_lr=c2.select_slider("Adam learning rate", LOG_CHOICES, value=1e-2, key="sk-alr", bind="query-params",
                                             help="Adam's step size (betas 0.9, 0.999)."),
                    damping=c3.select_slider("K-FAC initial damping λ", LOG_CHOICES, value=1e-2, key="sk-damp", bind="query-params",
                                             help="Where K-FAC's damping starts; the Levenberg-Marquardt rule then "
                                                  "adapts it. K-FAC's step size comes from its quadratic model."))

    return settings_form("sk", draw)[0]


def shampoo_vs_kfac(lab: Lab) -> None:
    st.markdown(
        "The digits autoencoder (64-128-64-32-8-32-64-128-64, tanh), full batch, the same starting weights for "
        f"all three. **Shampoo**: summed statistics, roots every {SHAMPOO_BASE['precondition_frequency']} "
        f"steps, $\\epsilon$ = {SHAMPOO_BASE['epsilon']:g} times the largest eigenvalue, Adam grafting. "
        f"**K-FAC**: true Fisher, factors averaged with decay {KFAC_BASE['factor_decay']}, inverses every "
        f"{KFAC_BASE['inverse_update_steps']} steps, step size and momentum from the quadratic model "
        "(Martens & Grosse 2015, §7), Levenberg-Marquardt damping. **Adam**: the baseline."
    )
    bench_results("shampoo", "Shampoo vs tuned Adam, step time vs pytorch-optimizer, sharded runs", shampoo_bench.report)
    bench_results("kfac", "K-FAC vs tuned Adam", kfac_bench.report)
    s = _versus_settings()
    if s is None:
        return
    specs = {
        "Shampoo": Spec.make(SHAMPOO_BASE | {"lr": s["shampoo_lr"]}, optimizer="shampoo", steps=s["steps"],
                             device=device()),
        "K-FAC": Spec.make(KFAC_BASE | {"damping": s["damping"]}, optimizer="kfac", steps=s["steps"],
                           device=device()),
        "Adam": Spec.make({"lr": s["adam_lr"]}, optimizer="adam", steps=s["steps"], device=device()),
    }
    trajs = run_all(specs)
    show_runs("sk", trajs, {"steps": s["steps"], "Shampoo learning rate": s["shampoo_lr"],
                            "Adam learning rate": s["adam_lr"], "K-FAC damping λ": s["damping"]})
    target = trajs["Adam"].final_loss
    rows = []
    for label, t in trajs.items():
        step, secs = t.steps_to(target), t.seconds_to(target)
        rows.append({"optimizer": label, "final loss": f"{t.final_loss:.4g}",
                     "step reaching Adam's final loss": "not reached" if step is None else str(step),
                     "seconds to reach it": "not reached" if secs is None else f"{secs:.2f}"})
    st.table(rows, hide_index=True)
    st.caption(f"Adam's final loss is {target:.4g}. Times are wall clock on this device, measured step by step "
               "while other sessions may share the machine.")


# ------------------------------------------------------------ memory
def _memory_rows(m: int, n: int, dtype: str, block: int | None, layout: str) -> list[dict]:
    parts = costs.shampoo_factor_costs(m, n, dtype=dtype, block_size=block)
    blocks = costs.shampoo_blocks(m, n, block)
    rows = [{"layout": layout, "matrix": c.name, "blocks": blocks, "entries": c.entries, "bytes": c.bytes,
             "memory": costs.human_bytes(c.bytes)} for c in parts]
    total = sum(c.bytes for c in parts)
    rows.append({"layout": layout, "matrix": "total", "blocks": blocks, "entries": sum(c.entries for c in parts),
                 "bytes": total, "memory": costs.human_bytes(total)})
    return rows


def shampoo_memory(lab: Lab) -> None:
    c1, c2, c3 = st.columns(3)
    m = int(c1.number_input("rows m", min_value=1, max_value=1_000_000, value=32000, step=1, key="sm-m", bind="query-params",
                            help="Rows of the weight matrix, e.g. the vocabulary of an embedding: L is m x m."))
    n = int(c1.number_input("columns n", min_value=1, max_value=1_000_000, value=4096, step=1, key="sm-n", bind="query-params",
                            help="Columns of the weight matrix, e.g. the hidden size: R is n x n."))
    dtype = c2.selectbox("dtype", list(costs.DTYPE_BYTES), index=1, key="sm-dtype", bind="query-params",
                         help="The number format of the statistics and roots: bytes per entry.")
    block = c2.select_slider("block size", BLOCK_CHOICES, value=1024, key="sm-block", bind="query-params",
                             help="Distributed Shampoo's max_preconditioner_dim: the matrix is cut into blocks at "
                                  "most this wide, each with its own small L and R.")
    gpus = int(c3.number_input("GPUs", min_value=1, max_value=256, value=4, step=1, key="sm-gpus", bind="query-params",
                               help="How many GPUs share the blocks (a block is never split between them)."))
    rows = _memory_rows(m, n, dtype, None, "unblocked") + _memory_rows(m, n, dtype, block, f"blocks of {block}")
    st.table(rows, hide_index=True)
    totals = [r for r in rows if r["matrix"] == "total"]
    log = st.toggle("log scale", value=False, key="sm-log", bind="query-params",
                    help="A log scale shows sizes that differ a million-fold side by side but makes a 4x "
                         "difference look small.")
    chart(cost_figure([{"name": r["layout"], "bytes": r["bytes"], "bytes_text": r["memory"]} for r in totals],
                      "bytes", "statistics and inverse roots", log=log), "sm-fig")
    blocks = costs.shampoo_blocks(m, n, block)
    if blocks > MAX_BLOCKS:
        st.warning(f"With blocks of {block} this matrix has {blocks:,} blocks: too many to hand out to GPUs one by "
                   "one here. Choose a larger block size or smaller sizes to see the per-GPU share.")
        return
    shares = {layout: costs.shampoo_memory(m, n, dtype=dtype, block_size=b, world_size=gpus)
              for layout, b in (("unblocked", None), (f"blocks of {block}", block))}
    cols = st.columns(len(shares) + 1)
    for col, (layout, mem) in zip(cols, shares.items(), strict=False):
        col.metric(f"largest per-GPU share, {layout}", costs.human_bytes(max(mem.per_rank)),
                   help="Blocks go, largest first, to the GPU holding the least so far; a block is never split.")
    blocked = shares[f"blocks of {block}"]
    cols[-1].metric("total / GPUs", costs.human_bytes(blocked.total_bytes / gpus))
    if gpus > 1:
        fig = rank_bars_figure({"statistics and roots": blocked.per_rank}, f"per GPU, blocks of {block}", "memory",
                               level=blocked.total_bytes / gpus, level_name="total / GPUs",
                               text=[costs.human_bytes(b) for b in blocked.per_rank], bytes_axis=True, holder="GPU")
        chart(fig, "sm-ranks")
    st.caption(f"Unblocked, the whole matrix is one block, so one GPU holds all "
               f"{costs.human_bytes(shares['unblocked'].total_bytes)} however many GPUs there are. SI units: "
               "1 GB = 10⁹ bytes.")
