"""Labs of the Riemannian lesson that train on curved spaces: the Fisher-Rao natural gradient on the
simplex, and a tree embedded in the Poincare disk (Riemannian Adam against Euclidean Adam)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from course.lessons import Lab
from natgrad.bench import simplex as simplex_bench
from natgrad.bench.protocol import fmt
from natgrad.experiments import Spec, Trajectory
from natgrad.presets import MANIFOLD_PRESETS
from natgrad.tasks.poincare import make_tree_option, mean_rank
from natgrad.viz import disk_frames, loss_figure, poincare_figure, recorded_points, ternary_figure
from views.labs.common import BENCH_DIR, bench_results, cached, device, report_status, run_all, settings_form
from views.labs.figures import chart, with_previous
from views.labs.riemannian import LR_CHOICES

TOLERANCE = 1e-10


# ------------------------------------------------------------------ the simplex
def _simplex_settings() -> dict | None:
    p = MANIFOLD_PRESETS["simplex-kl"]

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        return dict(
            q1=c1.slider("target q1", 0.01, 0.97, 0.7, 0.01, key="kl-q1", bind="query-params",
                         help="The target probability of outcome 1 (q3 is what q1 and q2 leave)."),
            q2=c1.slider("target q2", 0.01, 0.97, 0.2, 0.01, key="kl-q2", bind="query-params",
                         help="The target probability of outcome 2."),
            start=c2.radio("start", ["uniform", "near outcome 3"], key="kl-start", bind="query-params",
                           help="Where both methods start: all three outcomes equally likely, or (0.05, 0.05, 0.9)."),
            steps=c2.select_slider("steps", [10, 20, 50, 100, 200], value=50, key="kl-steps", bind="query-params",
                                   help="How many steps each method takes."),
            ng_lr=c3.select_slider("natural gradient learning rate", [0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0],
                                   value=p["riemannian-sgd"]["lr"], key="kl-nglr", bind="query-params",
                                   help="The step size of the Fisher-Rao natural gradient; 1 is the full step."),
            pgd_lr=c3.select_slider("projected GD learning rate", LR_CHOICES, value=p["projected-sgd"]["lr"],
                                    key="kl-pgdlr", bind="query-params", help="The step size of projected gradient descent."))

    def validate(v: dict) -> str | None:
        if 1.0 - v["q1"] - v["q2"] < 0.01:
            return (f"q1 + q2 = {v['q1'] + v['q2']:.2f} leaves nothing for q3; the target must be a distribution "
                    "with every probability at least 0.01. Lower q1 or q2.")
        return None

    return settings_form("kl", draw, validate=validate)[0]


def _path(t: Trajectory, start: tuple[float, ...]) -> np.ndarray:
    return np.vstack([np.array(start)[None, :], recorded_points(t.extras, ["p1", "p2", "p3"])])


def _stored_ratio_text() -> str:
    r = simplex_bench.load(BENCH_DIR / "simplex.json")
    if r is None:
        return "No benchmark result is stored yet (`python -m natgrad.bench simplex --out docs/bench/simplex.json`)."
    rows = [row for row in r["rows"] if row["ratio"] is not None]
    ng = [row["natural gradient"]["steps"] for row in r["rows"]]
    lo, hi = min(rows, key=lambda row: row["ratio"]), max(rows, key=lambda row: row["ratio"])

    def name(row: dict) -> str:
        return "(" + ", ".join(f"{x:g}" for x in row["target"]) + ")"

    return (f"In the stored benchmark (`python -m natgrad.bench simplex`: {len(r['rows'])} targets from the "
            f"uniform start, KL ≤ {r['protocol']['tolerance']:g} in float64, each method's learning rate tuned per "
            f"target) the natural gradient needed {min(ng)} to {max(ng)} steps on every target. Projected gradient "
            f"descent needed {fmt(r['min_ratio'], '.1f')}x as many at {name(lo)} "
            f"({lo['projected GD']['steps']} steps) and {fmt(hi['ratio'], '.1f')}x at {name(hi)} "
            f"({hi['projected GD']['steps']} steps); the median ratio is {fmt(r['median_ratio'], '.1f')}x. The "
            "more uneven the target, the worse projected GD does: near the optimum the loss curves like "
            r"$\sum_i (p_i - q_i)^2/(2q_i)$, so its condition number is about $\max_i q_i/\min_i q_i$, which the "
            "natural gradient does not see.")


def simplex_fit(lab: Lab) -> None:
    st.markdown(
        "Fit a categorical distribution $p$ on three outcomes to a target $q$ by minimising "
        "$\\mathrm{KL}(q\\,\\|\\,p) = \\sum_i q_i\\log(q_i/p_i)$ (maximum likelihood). **Projected gradient "
        "descent** takes the Euclidean step $p - \\eta\\nabla \\mathcal{L} = p + \\eta\\, q/p$ and projects it back onto the "
        "simplex. The **natural gradient** is geoopt's Riemannian SGD on our Fisher-Rao simplex: its gradient "
        "$p\\odot(\\nabla \\mathcal{L} - \\langle p, \\nabla \\mathcal{L}\\rangle) = p - q$ points straight at the target, and the "
        "retraction $p\\odot e^{u/p}/Z$ keeps every step a distribution. " + _stored_ratio_text()
    )
    bench_results("simplex", "natural gradient vs projected GD on the simplex", simplex_bench.report)
    s = _simplex_settings()
    if s is None:
        return
    target = (s["q1"], s["q2"], round(1.0 - s["q1"] - s["q2"], 10))
    start = (1 / 3, 1 / 3, 1 / 3) if s["start"] == "uniform" else (0.05, 0.05, 0.9)
    options = {"target": target, "start": start}
    specs = {"natural gradient": Spec.make({"lr": s["ng_lr"]}, options, task="simplex-kl", optimizer="riemannian-sgd",
                                           steps=s["steps"], dtype="float64", device=device()),
             "projected GD": Spec.make({"lr": s["pgd_lr"]}, options, task="simplex-kl", optimizer="projected-sgd",
                                       steps=s["steps"], dtype="float64", device=device())}
    trajs = run_all(specs)
    for label, t in trajs.items():
        report_status(label, t)
    shown = with_previous("kl", trajs, {"target": target, "start": s["start"], "steps": s["steps"],
                                        "natural gradient learning rate": s["ng_lr"],
                                        "projected GD learning rate": s["pgd_lr"]})
    c1, c2 = st.columns(2)
    chart(ternary_figure({k: _path(t, start) for k, t in trajs.items()}, target, start), "kl-ternary", c1)
    fig = loss_figure(shown, "step", "KL(q || p) before each step")
    fig.update_yaxes(title_text="KL(q || p)")
    chart(fig, "kl-loss", c2)
    reached = {k: t.steps_to(TOLERANCE) for k, t in trajs.items()}
    cols = st.columns(2)
    for col, (label, t) in zip(cols, trajs.items(), strict=True):
        col.metric(label, f"KL {t.final_loss:.3g}", help="the loss before the last step",
                   delta=f"KL ≤ {TOLERANCE:g} at step {reached[label]}" if reached[label] is not None
                   else f"KL ≤ {TOLERANCE:g} not reached", delta_color="off", delta_arrow="off")
    ng, pgd = reached["natural gradient"], reached["projected GD"]
    if ng and pgd:
        verdict = f"Here projected GD needed {pgd / ng:.1f} times as many steps."
    elif ng is not None and pgd is None:
        verdict = f"Here projected GD did not get there in {s['steps']} steps."
    else:
        verdict = "Try a natural-gradient learning rate of 1: the full step."
    st.caption(
        "With learning rate 1 the natural-gradient step is $p - (p - q) = q$ to first order; the retraction "
        "bends it slightly, so a few steps remain. Projected GD's step $\\eta\\,q_i/p_i$ is largest where $p_i$ "
        "is small: near the target the curvature of the loss along outcome $i$ is $1/q_i$, so a small $q_i$ "
        "forces a small learning rate on every coordinate. " + verdict
    )


# ------------------------------------------------------------------ the Poincare disk
EMBED_RUNS = {  # label -> optimizer, extra hyper-parameters
    "Riemannian Adam": "riemannian-adam",
    "projected Adam (Adam, then clip into the disk)": "projected-adam",
    "Adam (plain)": "adam",
}
DISK_KEYS = dict(zip(EMBED_RUNS, ("riemannian", "projected", "plain"), strict=True))  # figure keys of the disks


def _embed_settings() -> dict | None:
    p = MANIFOLD_PRESETS["poincare-tree"]
    # outside the form, so that the balanced tree's sliders are switched off at once for the taxonomy
    tree = st.radio("tree", ["taxonomy", "balanced"], key="pe-tree", bind="query-params", horizontal=True,
                    format_func={"taxonomy": "a small animal taxonomy (40 nodes)", "balanced": "a balanced tree"}.get,
                    help="The tree to embed: a fixed taxonomy, or a balanced tree whose shape you choose.")

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        out = dict(
            tree=tree,
            branching=c1.select_slider("children per node", [2, 3, 4], value=3, key="pe-branch", bind="query-params",
                                       disabled=tree != "balanced",
                                       help="Balanced tree: how many children every inner node has."),
            depth=c1.select_slider("depth", [2, 3, 4], value=3, key="pe-depth", bind="query-params", disabled=tree != "balanced",
                                   help="Balanced tree: how many levels below the root."),
            steps=c2.select_slider("steps", [100, 200, 400, 800], value=400, key="pe-steps", bind="query-params",
                                   help="How many updates each of the three runs makes."),
            radam_lr=c3.select_slider("Riemannian Adam learning rate", LR_CHOICES, value=p["riemannian-adam"]["lr"],
                                      key="pe-rlr", bind="query-params", help="The step size of Riemannian Adam (in hyperbolic distance)."),
            adam_lr=c3.select_slider("Adam learning rate", LR_CHOICES, value=p["adam"]["lr"], key="pe-alr", bind="query-params",
                                     help="One step size for projected and plain Adam (in coordinates)."))
        if tree != "balanced":
            c1.caption("Children and depth shape the balanced tree only; choose it above to set them.")
        return out

    def validate(v: dict) -> str | None:
        if v["tree"] == "balanced" and v["branching"] ** v["depth"] > 100:
            return (f"A balanced tree with {v['branching']} children per node and depth {v['depth']} has "
                    f"{v['branching'] ** v['depth']} leaves; keep it to at most 100 so the page stays quick.")
        return None

    return settings_form("pe", draw, validate=validate)[0]


def _left_the_disk(t: Trajectory, names: tuple[str, ...]) -> str | None:
    """In words: which update first put a node at norm >= 1, and how the run ended."""
    norms = t.extras.get("max norm", [])
    left = next((i for i, v in enumerate(norms) if v is not None and v >= 1), None)
    if left is None:
        return None
    xy = recorded_points(t.extras, [f"{c}{i}" for i in range(len(names)) for c in "xy"])[left].reshape(-1, 2)
    r = np.linalg.norm(xy, axis=1)
    who = ", ".join(f"'{names[i]}' (norm {r[i]:.4f})" for i in np.flatnonzero(r >= 1)[:3])
    return (f"The update of step {t.step[left]} moved {who} out of the disk. There $1-\\lVert x\\rVert^2 \\le 0$, so "
            "the Poincaré distance from that node is undefined and the loss becomes NaN. "
            + t.message.split(". ")[0] + ".")  # run()'s advice after it (learning rate, damping) is generic


def hyperbolic_embedding(lab: Lab) -> None:
    st.markdown(
        "Each node of a tree gets a point in the Poincaré disk. The loss is Nickel & Kiela's (2017): for every "
        "(node, ancestor) pair, minus the log-probability that the ancestor is the closest among the ancestor "
        "and all nodes unrelated to the node, with the Poincaré distance "
        "$d(x,y) = \\operatorname{arcosh}\\big(1 + 2\\lVert x-y\\rVert^2/((1-\\lVert x\\rVert^2)(1-\\lVert y\\rVert^2))\\big)$. "
        "Three runs from the same start (every point within $10^{-3}$ of the centre), float64: geoopt's Riemannian "
        "Adam (Bécigneul & Ganea, 2019), Adam followed by clipping each point back to norm $1-10^{-5}$, and plain "
        "Adam on the raw coordinates. Drag the slider under a disk, or press play, to watch the layout form."
    )
    s = _embed_settings()
    if s is None:
        return
    options = {"tree": s["tree"]} | ({"branching": s["branching"], "depth": s["depth"]} if s["tree"] == "balanced" else {})
    tree = make_tree_option(**options)
    lrs = {"riemannian-adam": s["radam_lr"], "projected-adam": s["adam_lr"], "adam": s["adam_lr"]}
    specs = {}
    for label, opt in EMBED_RUNS.items():
        hp = {"lr": lrs[opt]} | ({"on_manifold": "warn"} if opt == "adam" else {})
        specs[label] = Spec.make(hp, options, task="poincare-tree", optimizer=opt, steps=s["steps"],
                                 dtype="float64", device=device())
    trajs = run_all(specs)
    depth = [tree.depth(i) for i in range(tree.size)]
    rows, all_frames = [], {}
    for label, t in trajs.items():  # how each run ended, above the one disk drawn
        story = _left_the_disk(t, tree.names)
        if story:
            # how the run ended, as report_status says it: a result of the lab, not a fault of the app
            st.warning(f"**{label}**: {story}", icon=":material/trending_up:")
        else:
            report_status(label, t)
        frames = all_frames[label] = disk_frames(t.step, t.extras, tree.size)
        last = frames[-1][1] if frames else None
        rows.append({"run": label, "steps run": len(t.step), "final loss": f"{t.final_loss:.4g}",
                     "mean rank (1 is perfect)": "undefined" if last is None or (np.linalg.norm(last, axis=1) >= 1).any()
                     else f"{mean_rank(tree, last):.2f}",
                     "largest norm": "n/a" if last is None else f"{np.linalg.norm(last, axis=1).max():.6f}"})
    # one animated disk at a time: each carries about 30 frames, and three of them made the page take
    # a second longer to draw in the browser
    label = st.radio("Disk of", list(trajs), key="pe-disk", bind="query-params", horizontal=True,
                     help="Which run's layout to draw in the Poincaré disk, animated over its steps.")
    frames = all_frames[label]
    if frames:  # an animated figure takes about 0.3 s to build: once per run, for every session
        fig = cached(("poincare-figure", specs[label], len(trajs[label].step)),
                     lambda: poincare_figure(frames, tree.names, depth, tree.edges()), instant=True)
        chart(fig, f"pe-disk-{DISK_KEYS[label]}")
    shown = with_previous("pe", trajs, {"tree": s["tree"], "steps": s["steps"],
                                        "Riemannian Adam learning rate": s["radam_lr"],
                                        "Adam learning rate": s["adam_lr"]}
                          | ({"children": s["branching"], "depth": s["depth"]} if s["tree"] == "balanced" else {}))
    fig = loss_figure(shown, "step", "embedding loss")
    fig.update_yaxes(title_text="embedding loss")
    chart(fig, "pe-loss")
    st.table(rows, hide_index=True)
    radam = trajs["Riemannian Adam"]
    st.caption(
        f"Riemannian Adam divides by the Riemannian norm of the gradient, $\\lVert g\\rVert_x = "
        f"\\lVert\\nabla \\mathcal{{L}}\\rVert/\\psi_x$, so each step covers about the learning rate in hyperbolic distance "
        f"wherever the point is, and its retraction keeps the point inside: loss {radam.final_loss:.3g} after "
        f"{len(radam.step)} steps. Euclidean Adam moves every coordinate by about the learning rate whatever the "
        "metric; near the rim, where the conformal factor $\\psi_x = 2/(1-\\lVert x\\rVert^2)$ is large, that is a long way, and "
        "nothing stops a step from crossing the rim. Clipping keeps the run alive but piles points against the "
        "boundary; without it the run ends the moment one point crosses. The failure is deterministic: the same "
        "settings fail at the same step every time."
    )
