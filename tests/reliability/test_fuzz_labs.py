"""Every registered lab, every widget through its range, under AppTest.

For each lab in ``views.labs.LABS`` (so labs added later are covered without
editing this file) the test draws the lab as its lesson page does, in its frame
but without the rest of the page (:func:`_one_lab`; tests/app renders whole
pages), and runs it once at its *baseline*: every widget at its default, except
that a widget whose label names a number of steps starts at its smallest value
(training length is what makes a run slow; every other value still trains for
real).

Every widget then visits each of its ends and one middle value (every option of
a radio or selectbox, both states of a checkbox or toggle, none and as many
options as allowed of a multiselect, empty, long and hostile text, a click of a
button). The visits are grouped into *rounds*, a grid that covers every value of
every widget: in round r every widget of one form (or every widget outside
forms) takes its r-th value, or its default when it has fewer, and the form is
sent once. So a form of sliders needs three runs, not three per slider, and the
values meet each other's extremes. A steps widget is moved in rounds of its own,
the others at the baseline, so a long run never stacks on other extremes. A
widget that only some value reveals is driven while it is shown. After every run
the page must hold no exception element, no traceback text and no "This lab
stopped with an error" message.

A widget that is disabled at the baseline (a control that does nothing under the
default choice, such as a learning rate the chosen rule ignores) is driven as soon as
moving another widget enables it; one that nothing enables fails the test.

A widget kind the test does not know how to drive fails the test (teach it
below); nothing is skipped silently.
"""

from __future__ import annotations

import re
import time

import pytest
from streamlit.runtime.state.common import TESTING_KEY
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Widget

from course.lessons import load_lessons
from course.progress import ENV_VAR
from views.labs import LABS

LAB_TIMEOUT_S = 600  # one run may train a lab's longest setting or start four ranks on a busy machine
LAB_STOPPED = "This lab stopped with an error"
TRACEBACK = "Traceback (most recent call last)"
TEXT_KINDS = ("markdown", "caption", "error", "warning", "info", "success", "code", "text", "exception", "metric",
              "title", "header", "subheader")
STEPS_LABEL = re.compile(r"\bsteps\b", re.IGNORECASE)
MAX_RUNS = 150  # a lab whose widgets keep changing ids would otherwise be driven forever
LONG_TEXT = "x" * 10_000
HOSTILE_TEXT = "=1+1 ![p](http://127.0.0.1:9/p.png) <b>b</b> :red[r] $x$"


def _lesson_of(lab_id: str) -> str | None:
    for lesson in load_lessons():
        if any(lab.id == lab_id for lab in lesson.labs):
            return lesson.slug
    return None


def _walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)


def _lab_block(at: AppTest, lab_id: str):
    """The bordered container lab_frame draws for this lab (its first line names the lab)."""
    title = next(lab.title for lesson in load_lessons() for lab in lesson.labs if lab.id == lab_id)
    heading = f"#### :material/science: Lab: {title}"
    for node in _walk(at.main):
        kids = list(getattr(node, "children", {}).values())
        if kids and getattr(kids[0], "type", None) == "markdown" and kids[0].value == heading:
            return node
    raise AssertionError(f"lab {lab_id}: no frame titled {title!r} on the page")


def _widgets(at: AppTest, lab_id: str) -> dict[str, object]:
    """The lab's widgets by id, form submit buttons left out (they are how a form is sent)."""
    out = {}
    for node in _walk(_lab_block(at, lab_id)):
        if isinstance(node, Widget) and not str(node.key or "").startswith("FormSubmitter:"):
            out[node.id] = node
    return out


def _submit_button(at: AppTest, form_id: str):
    buttons = [b for b in at.button if b.form_id == form_id and str(b.key or "").startswith("FormSubmitter:")]
    assert len(buttons) == 1, f"form {form_id}: {len(buttons)} submit buttons"
    return buttons[0]


def _by_label(at: AppTest, node) -> None:
    """Let ``set_value`` take an option's label: AppTest maps values to labels with the
    widget's format_func, which the test cannot invert in general."""
    at.session_state[TESTING_KEY][node.id] = str


def _midpoint(lo, hi, step):
    mid = lo + (hi - lo) / 2
    if step:
        mid = lo + round((mid - lo) / step) * step
    return type(lo)(mid) if isinstance(lo, int) and isinstance(step, int) else mid


def values_to_try(node) -> list:
    """The values one widget is moved to: ends and a middle value, or every option."""
    kind = node.type
    if kind == "select_slider":
        labels = list(node.options)
        return [labels[0], labels[len(labels) // 2], labels[-1]]
    if kind == "slider":
        lo, hi = node.min, node.max
        if not isinstance(lo, (int, float)):
            raise AssertionError(f"slider {node.key}: the fuzz drives numeric sliders only (got {type(lo).__name__})")
        return [lo, _midpoint(lo, hi, node.step), hi]
    if kind == "number_input":
        default = node.value if node.value is not None else 0
        lo = node.min if node.min is not None else -1000 * max(1, abs(default))  # unbounded: far from the default
        hi = node.max if node.max is not None else 1000 * max(1, abs(default))
        step = node.step if node.step else None
        values = [lo, _midpoint(lo, hi, step), hi]
        return [int(v) for v in values] if isinstance(default, int) else values
    if kind in ("radio", "selectbox"):
        return list(node.options)
    if kind in ("checkbox", "toggle"):
        return [not node.value]
    if kind == "multiselect":  # none, and as many as the widget allows (0 means no limit)
        cap = getattr(node, "max_selections", 0) or len(node.options)
        return [[], list(node.options)[:cap]]
    if kind in ("text_input", "text_area"):
        return ["", LONG_TEXT, HOSTILE_TEXT]
    if kind in ("button", "download_button"):
        return [True]
    raise AssertionError(f"the fuzz does not know how to drive a {kind} widget ({node.key}): teach values_to_try")


def _cheapest(node):
    """The smallest value of a steps widget (the baseline), or None for any other widget."""
    if not STEPS_LABEL.search(str(getattr(node, "label", ""))):
        return None
    if node.type in ("select_slider", "slider", "number_input"):
        return values_to_try(node)[0]
    return None


def _current(node):
    if node.type in ("select_slider", "radio", "selectbox"):
        try:
            return node.format_func(node.value) if node.value is not None else None
        except Exception:  # noqa: BLE001 - fall back to the raw value
            return node.value
    if node.type == "multiselect":
        return list(node.values)
    return node.value


def _check(at: AppTest, what: str) -> None:
    assert not at.exception, f"{what}: exception element {[e.value for e in at.exception]}"
    for kind in TEXT_KINDS:
        for el in at.get(kind):
            text = str(getattr(el, "value", ""))
            assert TRACEBACK not in text, f"{what}: traceback text in a {kind}: {text[:300]}"
            assert LAB_STOPPED not in text, f"{what}: {text[:300]}"


CLICKS = ("button", "download_button")


class Driver:
    """Sets widgets, sends their form and runs the lab; remembers what it tried."""

    def __init__(self, at: AppTest, lab_id: str):
        self.at, self.lab_id = at, lab_id
        self.defaults: dict[str, object] = {}
        self.tried: list[str] = []
        self.driven: set[str] = set()  # widgets set to a value at least once
        self.disabled: set[str] = set()  # widgets found disabled when their turn came

    def widgets(self) -> dict[str, object]:
        return _widgets(self.at, self.lab_id)

    def run_with(self, form: str, values: dict[str, object]) -> None:
        """Set each widget in ``values`` (ids of one form, or of none), send the form, run, check."""
        nodes = self.widgets()
        for wid, value in values.items():
            if wid not in nodes:
                continue
            if nodes[wid].disabled:  # a browser user cannot move it either; driven once something enables it
                self.disabled.add(wid)
                continue
            self._set(nodes[wid], value)
            self.driven.add(wid)
        what = ", ".join(f"{nodes[w].key or w} = {str(v)[:40]!r}" for w, v in values.items()
                         if w in nodes and not nodes[w].disabled)
        if form:
            _submit_button(self.at, form).click()
        start = time.monotonic()
        self.at = self.at.run(timeout=LAB_TIMEOUT_S)
        self.tried.append(f"{what or 'baseline'} ({time.monotonic() - start:.1f} s)")
        assert len(self.tried) <= MAX_RUNS, f"lab {self.lab_id}: over {MAX_RUNS} runs; widget ids keep changing?"
        _check(self.at, f"lab {self.lab_id}: {what}")

    def _set(self, node, value) -> None:
        if node.type in CLICKS:
            if value:
                node.click()
            return
        if node.type in ("select_slider", "radio", "selectbox", "multiselect"):
            _by_label(self.at, node)
        node.set_value(value)


def _one_lab(lab_id: str) -> None:
    """The lab alone, in the frame its lesson page draws it in."""
    from course.lessons import load_lessons
    from course.widgets import lab_frame
    from views.labs import LABS

    lab = next(lab for lesson in load_lessons() for lab in lesson.labs if lab.id == lab_id)
    lab_frame(lab, LABS[lab_id])


def _registered_labs() -> list[str]:
    return sorted(LABS)


def _rounds(driver: Driver, group: list[str], form: str, baseline: dict[str, object], done: set[str]) -> None:
    """Rounds over ``group`` (widget ids of ``form``): every value of every widget, a steps
    widget in rounds of its own; widgets revealed on the way get rounds of their own."""
    nodes = driver.widgets()
    plain = [w for w in group if w in nodes and w not in baseline]
    steps = [w for w in group if w in nodes and w in baseline]
    values = {w: [v for v in values_to_try(nodes[w]) if nodes[w].type in CLICKS or v != driver.defaults[w]]
              for w in plain + steps}
    rest = {w: (False if nodes[w].type in CLICKS else driver.defaults[w]) for w in plain + steps}
    schedule = [{w: vs[r] if r < len(vs) else rest[w] for w, vs in values.items() if w in plain}
                for r in range(max((len(values[w]) for w in plain), default=0))]
    schedule += [{**{w: rest[w] for w in plain}, w: v, **{o: rest[o] for o in steps if o != w}}
                 for w in steps for v in values[w]]
    done.update(group)
    for setting in schedule:
        driver.run_with(form, setting)
        _drive_revealed(driver, done)
    if schedule:
        driver.run_with(form, rest)  # back to the baseline before the next group


def _drive_revealed(driver: Driver, done: set[str]) -> None:
    new = {wid: node for wid, node in driver.widgets().items() if wid not in done}
    if not new:
        return
    for wid, node in new.items():
        driver.defaults[wid] = _current(node)
    cheap = {wid: v for wid, node in new.items() if (v := _cheapest(node)) is not None}
    for form in sorted({node.form_id or "" for node in new.values()}):
        _rounds(driver, [w for w, n in new.items() if (n.form_id or "") == form], form, cheap, done)


def _drive_enabled(driver: Driver) -> None:
    """A widget that was disabled whenever its turn came is driven through its values while
    a value of another widget of its form enables it; one that no value enables fails."""
    for wid in sorted(driver.disabled - driver.driven):
        node = driver.widgets().get(wid)
        if node is None:
            continue
        form = node.form_id or ""
        others = {w: n for w, n in driver.widgets().items()
                  if w != wid and (n.form_id or "") == form and n.type not in CLICKS}
        for other, onode in others.items():
            for value in values_to_try(onode):
                if value == driver.defaults.get(other):
                    continue
                driver.run_with(form, {other: value})
                target = driver.widgets().get(wid)
                if target is not None and not target.disabled:
                    for mine in values_to_try(target):
                        driver.run_with(form, {other: value, wid: mine})
                    break
            driver.run_with(form, {other: driver.defaults.get(other), wid: driver.defaults.get(wid)})
            if wid in driver.driven:
                break
        assert wid in driver.driven, f"lab {driver.lab_id}: no value of another widget ever enables {wid}"


@pytest.mark.parametrize("lab_id", _registered_labs())
def test_every_widget_of_the_lab_through_its_range(lab_id, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "p.sqlite3"))
    slug = _lesson_of(lab_id)
    assert slug is not None, f"lab {lab_id} is registered in views/labs/__init__.py but no lesson.yaml lists it"
    at = AppTest.from_function(_one_lab, args=(lab_id,), default_timeout=LAB_TIMEOUT_S).run()
    _check(at, f"lab {lab_id}: first render")
    t0 = time.monotonic()
    driver = Driver(at, lab_id)
    widgets = driver.widgets()
    assert widgets, f"lab {lab_id} has no widgets to drive"
    cheap = {wid: v for wid, node in widgets.items() if (v := _cheapest(node)) is not None}
    forms = sorted({node.form_id or "" for node in widgets.values()})
    for form in forms:  # the baseline, once per form, so widgets shown with results appear too
        driver.run_with(form, {w: v for w, v in cheap.items() if (widgets[w].form_id or "") == form})
    widgets = driver.widgets()
    driver.defaults = {wid: _current(node) for wid, node in widgets.items()}
    done: set[str] = set()
    for form in sorted({node.form_id or "" for node in widgets.values()}):
        _rounds(driver, [w for w, n in widgets.items() if (n.form_id or "") == form], form, cheap, done)
    _drive_revealed(driver, done)
    _drive_enabled(driver)
    untouched = set(driver.widgets()) - done
    assert not untouched, f"lab {lab_id}: widgets never driven: {sorted(untouched)}"
    print(f"lab {lab_id}: {len(driver.tried)} runs in {time.monotonic() - t0:.0f} s: " + "; ".join(driver.tried))
