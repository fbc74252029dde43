"""Lab renderers by lab id.

A lesson's ``lesson.yaml`` lists its labs; a lab whose id has a renderer here is
drawn by it, any other gets an honest "not built yet" frame. A renderer takes
the :class:`course.lessons.Lab` and draws widgets and figures by calling
``natgrad``.

Each renderer is registered as an ``st.fragment`` around
:func:`views.labs.common.render_lab`: a widget of one lab reruns that lab
alone, not the page with its text, questions and other labs. Inside that frame
every renderer is framed the same way (:func:`framed`): the lab's
"predict, then run" question first, then the lab, whose figures carry the
lesson's captions, then the learner's prediction again and the downloads.
"""

from __future__ import annotations

import gc
import importlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping

import streamlit as st

from course.lessons import Lab


def framed(render: Callable[[Lab], None]) -> Callable[[Lab], None]:
    """``render`` with the prediction question before it and the downloads after it."""
    from views.labs import figures, predict

    def draw(lab: Lab) -> None:
        with figures.lab_context(lab) as state:
            state.draw = figures.figures_near(lab)
            predict.block(lab)
            render(lab)
            if state.figures:
                predict.reminder(lab)
            figures.downloads()

    draw.__name__ = getattr(render, "__name__", "lab")
    draw.__wrapped__ = render
    return draw


def _fragment(render: Callable[[Lab], None]) -> Callable[[Lab], None]:
    """``render``, framed, as a fragment behind :func:`render_lab`'s error handling."""
    from views.labs.common import render_lab

    inner = framed(render)

    def lab_fragment(lab: Lab) -> None:
        render_lab(lab, inner)

    lab_fragment.__name__ = lab_fragment.__qualname__ = f"lab_{render.__name__}"
    lab_fragment.__wrapped__ = render
    return st.fragment(lab_fragment)


# lab id -> "module:renderer" in views.labs. The modules (torch, natgrad, plotly: about 2 s on the
# server's first run) are imported when a lab is first drawn, or before by the app's warm-up
# (:func:`warm_up`), so that the home page does not wait for them.
RENDERERS: dict[str, str] = {
    "adam-vs-fisher": "adam:adam_vs_fisher",
    "fisher-blocks": "kfac:fisher_blocks",
    "kfac-training": "kfac:kfac_training",
    "kfac-cost": "kfac:kfac_cost",
    "damping-lab": "damping:damping_lab",
    "why-quarter": "shampoo:why_quarter",
    "shampoo-vs-kfac": "shampoo:shampoo_vs_kfac",
    "shampoo-memory": "shampoo:shampoo_memory",
    "sharding": "sharding:sharding",
    "preconditioner-lab": "preconditioners:preconditioner_lab",
    "muon-shampoo": "preconditioners:muon_check",
    "optimizer-race": "race:optimizer_race",
    "retractions": "riemannian:retractions",
    "stiefel-practice": "riemannian:stiefel_practice",
    "simplex-natural-gradient": "hyperbolic:simplex_fit",
    "hyperbolic-embedding": "hyperbolic:hyperbolic_embedding",
    "sophia-clipping": "sophia:sophia_clipping",
}


def renderer(lab_id: str) -> Callable[[Lab], None]:
    """The function that draws lab ``lab_id`` (its module imported now if it was not)."""
    module, name = RENDERERS[lab_id].split(":")
    return getattr(importlib.import_module(f"views.labs.{module}"), name)


_warm_up: list[threading.Thread] = []
_warm_up_lock = threading.Lock()


def warm_up() -> threading.Thread:
    """Start, once per process, a background thread that imports every lab module (torch, natgrad,
    plotly figures: about 2 s on a server's first run), sympy through torch's symbolic shapes (the
    first ``torch.broadcast_shapes``, in geoopt: 0.3 s), and reads the shipped opening results
    (0.4 s), so that neither the server's first page nor its first lab page waits for them.
    A lab is drawn only after the thread has finished (:data:`LABS`), so lab modules are never
    imported by two threads at once; the thread imports nothing Streamlit imports by itself."""
    with _warm_up_lock:
        if not _warm_up:
            thread = threading.Thread(target=_warm, name="natgrad-warm-up", daemon=True)
            thread.start()
            _warm_up.append(thread)
        return _warm_up[0]


def _warm() -> None:
    try:
        for lab_id in RENDERERS:
            renderer(lab_id)
        importlib.import_module("torch.fx.experimental.symbolic_shapes")
        from views.labs.common import shipped_file

        shipped_file()
        # What was loaded lives as long as the server (3 MB of shipped results decoded into Python lists):
        # frozen, the collector's full passes no longer walk it. Without this, page loads took 1.9 or 3.4 s
        # depending on whether such a pass fell into them; with it 2.1-2.3 s (the Adam page, 6 loads).
        gc.freeze()
    except Exception:  # noqa: BLE001 - the page that needs it imports it again and reports the problem
        pass


def warming() -> bool:
    """Whether the warm-up thread is still at work."""
    return bool(_warm_up) and _warm_up[0].is_alive()


class _Labs(Mapping[str, Callable[[Lab], None]]):
    """Lab id -> the lab's fragment, made the first time it is asked for; membership and
    iteration need no import."""

    def __init__(self) -> None:
        self._fragments: dict[str, Callable[[Lab], None]] = {}
        self._lock = threading.Lock()

    def __getitem__(self, lab_id: str) -> Callable[[Lab], None]:
        if _warm_up and _warm_up[0] is not threading.current_thread():
            _warm_up[0].join()  # its imports finish first: no module is imported by two threads at once
        with self._lock:
            if lab_id not in self._fragments:
                self._fragments[lab_id] = _fragment(renderer(lab_id))
            return self._fragments[lab_id]

    def __contains__(self, lab_id: object) -> bool:
        return lab_id in RENDERERS

    def __iter__(self) -> Iterator[str]:
        return iter(RENDERERS)

    def __len__(self) -> int:
        return len(RENDERERS)


LABS: Mapping[str, Callable[[Lab], None]] = _Labs()


DROPPED_LINK_VALUES = "url-dropped"  # session state: link values taken out before the widgets read them (key -> raw values)


def _non_finite_number(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def drop_non_finite_link_values(keep: tuple[str, ...] = ("learner",)) -> None:
    """Take out of the link every value that reads as an infinite or NaN number ('1e400', 'inf'), but for the
    keys in ``keep``: Streamlit reads a whole number from a link with int(float(text)), so '1e400' raised an
    OverflowError inside the lab at every rerun, the value staying in the link. Call it before any widget is
    drawn; the lab whose widget it was says so (:func:`views.labs.common.render_lab`). No lab setting is infinite or NaN."""
    for k in list(st.query_params):
        raw = st.query_params.get_all(k)
        if k not in keep and any(_non_finite_number(v) for v in raw):
            st.session_state.setdefault(DROPPED_LINK_VALUES, {})[k] = raw
            del st.query_params[k]
