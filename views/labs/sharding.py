"""Lab of the Distributed Shampoo lesson: real gloo ranks, per-rank memory and time."""

from __future__ import annotations

import streamlit as st

from course.lessons import Lab
from natgrad import costs
from natgrad.distributed import DistributedRunError
from natgrad.sharding import (
    COLLECTIVE_TIMEOUT_S,
    DATA_SIZE,
    FAULTS,
    HANG_TIMEOUT_S,
    MAX_CONCURRENT_RUNS,
    MAX_RANKS,
    MODELS,
    ShardingBusy,
    ShardingConfig,
    ShardingResult,
    run_sharded,
)
from natgrad.viz import rank_bars_figure
from views.labs.common import cached_here, settings_form
from views.labs.figures import chart

FAULT_NAMES = {"none": "no, train normally", "raise": "make it raise an error", "hang": "make it hang"}


def _form() -> tuple[ShardingConfig | None, bool]:
    # outside the form, so that "rank to break" is switched off at once when nothing is broken
    fault = st.radio("break a rank on purpose?", FAULTS, format_func=FAULT_NAMES.get, key="sh-fault", bind="query-params", horizontal=True,
                     help="Make one rank raise an error or stop answering at step 3, to see how the launcher "
                          "notices, names the rank and ends every process.")

    def draw() -> dict:
        c1, c2, c3 = st.columns(3)
        out = dict(
            world_size=c1.select_slider("ranks (processes)", list(range(1, MAX_RANKS + 1)), value=2, key="sh-ranks", bind="query-params",
                                        help="How many processes share the training: each gets its slice of the "
                                             "data and owns some of Shampoo's blocks."),
            model=c1.radio("model", ["autoencoder", "wide"], format_func=lambda k: MODELS[k][0], key="sh-model", bind="query-params",
                           help="The network the ranks train together."),
            steps=c2.select_slider("steps", [10, 20, 50, 100], value=20, key="sh-steps", bind="query-params",
                                   help="How many updates the ranks make together."),
            max_preconditioner_dim=c2.select_slider("block size", [16, 32, 64, 128, 256], value=64, key="sh-block", bind="query-params",
                                                    help="max_preconditioner_dim: weights wider than this are cut "
                                                         "into blocks, and blocks are what the ranks share out."),
            fault=fault,
            fault_rank=c3.select_slider("rank to break", list(range(MAX_RANKS)), value=1, key="sh-frank", bind="query-params",
                                        disabled=fault == "none",
                                        help="Which rank fails at step 3 (ranks are numbered from 0)."))
        if fault == "none":
            c3.caption("No rank is broken, so there is no rank to choose: pick a way to break one above.")
        return out

    def validate(v: dict) -> str | None:
        if v["fault"] != "none" and v["fault_rank"] >= v["world_size"]:
            return (f"There is no rank {v['fault_rank']} among {v['world_size']} ranks (they are numbered from 0). "
                    "Pick a rank that exists, or fewer to break.")
        return None

    hint = ("Choose settings and press the button. Starting the processes takes a few seconds; results are "
            "cached per setting.")
    values, submitted = settings_form("sh", draw, "Launch the ranks and train", validate, hint)
    if values is not None and values["fault"] == "none":  # the rank to break then changes nothing: same run, cached
        values = values | {"fault_rank": ShardingConfig.fault_rank}
    return (None if values is None else ShardingConfig(**values)), submitted


def _launch(cfg: ShardingConfig) -> ShardingResult:
    # bar.progress is also where Streamlit stops a run whose page was rerun or closed:
    # run_sharded then ends every rank before the exception leaves it
    bar = st.progress(0.0, text="Starting ...")
    try:
        return run_sharded(cfg, progress=lambda frac, text: bar.progress(min(frac, 1.0), text=text))
    finally:  # also when a rank failed: no stale "step 0/20" bar under the error
        bar.empty()


def _failure(message: str) -> None:
    st.error(f"The sharded run stopped: {message}. Every rank's process has been ended; press the button to "
             "try again.", icon=":material/error:")


def sharding(lab: Lab) -> None:
    st.markdown(
        f"Pressing the button starts real processes, one per rank, joined by `torch.distributed` with the gloo "
        f"backend on this machine. Each rank trains on its own {DATA_SIZE} / W digits (data parallel; the "
        "gradients are averaged with an all-reduce), stores and updates only the Shampoo blocks assigned to it "
        "(largest root cost first, to the least-loaded rank), and receives the other blocks' directions with an "
        "all-gather. Then single-process Shampoo trains the same model on the whole batch for comparison."
    )
    cfg, submitted = _form()
    if cfg is None:
        return
    failed = st.session_state.get("sh-failed")
    if not submitted and failed is not None and failed[0] == cfg:
        _failure(failed[1])  # shown again without relaunching; the button retries
        return
    if cfg.fault == "hang":
        st.caption(f"A hung rank leaves its peers waiting in a collective; they give up after {HANG_TIMEOUT_S:.0f} s "
                   f"(normal runs: {COLLECTIVE_TIMEOUT_S:.0f} s) and the launcher names the rank that never finished.")
    try:
        result = cached_here(cfg, lambda: _launch(cfg))
    except ShardingBusy as exc:
        st.warning(f"Please wait: another sharded run is using this server's processes ({exc}). The server "
                   f"runs {MAX_CONCURRENT_RUNS} at a time so that each gets the CPU it needs; press the button "
                   "again in a minute. Nothing was started for you.", icon=":material/hourglass_top:")
        return
    except DistributedRunError as exc:
        st.session_state["sh-failed"] = (cfg, str(exc))
        _failure(str(exc))
        return
    st.session_state.pop("sh-failed", None)
    _show(result)


def _show(res: ShardingResult) -> None:
    W = res.config.world_size
    reports = res.reports
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("max |sharded − single process|", f"{res.max_abs_diff:.2e}",
              help="Largest difference over every weight and bias after training.")
    c2.metric("full-batch loss, sharded", f"{res.loss:.5g}")
    c3.metric("full-batch loss, single process", f"{res.reference_loss:.5g}")
    c4.metric("start-up and training", f"{res.launch_seconds:.1f} s",
              help="Spawning the processes, importing torch, joining the group and training.")
    total = sum(res.per_rank_bytes)
    same = "the same number" if total == res.reference_bytes else "a different number (a bug!)"
    st.markdown(
        f"Together the ranks hold **{total:,} bytes** of statistics and roots; single-process Shampoo holds "
        f"**{res.reference_bytes:,} bytes**: {same}. "
        + ("With one rank the computation is the single-process one, so the difference is exactly 0."
           if W == 1 else
           "The difference is floating-point rounding: the all-reduce sums the shards' mean gradients in a "
           "different order from a single full-batch sum, and Shampoo's roots carry these last-bit differences "
           "into later steps.")
    )
    f1, f2 = st.columns(2)
    chart(rank_bars_figure(
        {"statistics": [r["statistics_bytes"] for r in reports], "inverse roots": [r["root_bytes"] for r in reports]},
        "preconditioner memory per rank", "memory", level=res.reference_bytes / W, level_name="single process / ranks",
        text=[costs.human_bytes(b) for b in res.per_rank_bytes], bytes_axis=True), "sh-mem", f1)
    other = [max(r["seconds"] - r["root_seconds"] - r["comm_seconds"], 0.0) for r in reports]
    chart(rank_bars_figure(
        {"root computation": [r["root_seconds"] for r in reports],
         "communication": [r["comm_seconds"] for r in reports], "everything else": other},
        "time per rank in the training loop", "seconds",
        text=[f"{r['seconds']:.2f} s" for r in reports]), "sh-time", f2)
    st.table([{"rank": r["rank"], "blocks owned": len(r["blocks"]),
               "largest block": _largest(r["blocks"]),
               "bytes": r["preconditioner_bytes"], "memory": costs.human_bytes(r["preconditioner_bytes"]),
               "share of single process": f"{r['preconditioner_bytes'] / res.reference_bytes:.1%}",
               "root seconds": f"{r['root_seconds']:.3f}", "communication seconds": f"{r['comm_seconds']:.3f}"}
              for r in reports], hide_index=True)
    st.caption("Communication counts the gradient all-reduce and the direction all-gather, including time spent "
               "waiting for slower ranks. On a shared CPU the ranks also compete for cores, so times vary run "
               "to run; the memory split does not.")


def _largest(blocks: list[dict]) -> str:
    if not blocks:
        return "-"
    b = max(blocks, key=lambda b: b["cost"])
    return f"{b['name']} {'x'.join(map(str, b['shape']))}"
