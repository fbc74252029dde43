"""rank_bars_figure: one stacked bar per rank, values as given, the level line named."""

from natgrad.viz import rank_bars_figure


def test_rank_bars_stack_the_parts_per_rank():
    fig = rank_bars_figure({"statistics": [3, 4, 5], "roots": [1, 2, 3]}, "memory", "bytes", level=6.0,
                           level_name="total / ranks", text=["4 B", "6 B", "8 B"])
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.name for b in bars] == ["statistics", "roots"]
    assert list(bars[0].x) == ["rank 0", "rank 1", "rank 2"] and list(bars[1].y) == [1, 2, 3]
    assert bars[0].text is None and list(bars[1].text) == ["4 B", "6 B", "8 B"]  # labels on top of the stack
    assert fig.layout.barmode == "stack"
    assert [s.y0 for s in fig.layout.shapes] == [6.0]
    assert any(t.type == "scatter" and t.name == "total / ranks" for t in fig.data)


def test_without_level_there_is_no_line():
    fig = rank_bars_figure({"seconds": [0.5]}, "time", "s")
    assert not fig.layout.shapes and len(fig.data) == 1
