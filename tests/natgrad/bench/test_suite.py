"""The benchmark suite: the report's CSV round trip, its HTML, the command line running
several benchmarks, and the SOAP/Muon benchmark's pieces with tiny settings."""

from __future__ import annotations

import json
import math

import pytest

from natgrad.bench import report as rp
from natgrad.bench import soap_muon
from natgrad.bench.__main__ import BENCHES, main, progress_bar
from natgrad.bench.protocol import to_jsonable

RESULT = {"quick": True, "device": "cpu", "machine": {"torch": "2.13.0", "threads": 1},
          "targets": [{"adam_horizon": 50, "target": 1.25, "soap_steps": 12, "step_ratio": 49 / 12, "note": 'a, "b"\nc'},
                      {"adam_horizon": 300, "target": 0.1, "soap_steps": None, "step_ratio": math.inf}],
          "timing": {"seconds_per_step": {"Adam": 0.007, "natgrad SOAP": 0.0081}, "threads": 1},
          "curves": {"Adam": {"hparams": {"lr": 0.01}, "step": list(range(40)), "loss": [1 / (i + 1) for i in range(40)],
                              "seconds": [0.01 * (i + 1) for i in range(40)]}},
          "protocol": {"adam_lrs": [3e-3, 1e-2], "flag": False}}


def test_csv_round_trips_every_scalar(tmp_path):
    rows = rp.flatten("soap-muon", RESULT)
    path = tmp_path / "sub" / "report.csv"
    rp.write_csv(rows, path)
    back = rp.read_csv(path)
    assert back == rows
    assert [type(r["value"]) for r in back] == [type(r["value"]) for r in rows]  # ints stay ints, bools bools
    assert rp.value(back, "soap-muon", "targets.0.step_ratio") == 49 / 12  # floats exactly
    assert rp.value(back, "soap-muon", "targets.0.note") == 'a, "b"\nc'
    assert rp.value(back, "soap-muon", "targets.1.step_ratio") is None  # inf is not JSON: written as null
    assert rp.value(back, "soap-muon", "protocol.adam_lrs.1") == 1e-2 and rp.value(back, "soap-muon", "protocol.flag") is False
    assert not any(r["path"].startswith("curves.Adam.loss") for r in back)  # long curves stay out of the CSV
    assert rp.value(back, "soap-muon", "curves.Adam.hparams.lr") == 0.01
    with pytest.raises(KeyError):
        rp.value(back, "kfac", "targets.0.step_ratio")


def test_html_report_is_self_contained(tmp_path):
    path = tmp_path / "report.html"
    rp.write_html({"soap-muon": (to_jsonable(RESULT), "SOAP report <text>"), "kfac": ({"curves": RESULT["curves"]}, "K")},
                  path)
    page = path.read_text()
    assert "SOAP report &lt;text&gt;" in page and "<h2>kfac</h2>" in page
    assert page.count("plotly.js v") >= 1 and "<script src=" not in page  # plotly inlined, no network
    assert page.count('class="plotly-graph-div"') == 3  # curves and timing of one, curves of the other


def test_command_line_runs_several_benchmarks_and_writes_the_report(tmp_path, monkeypatch, capsys):
    fake = {"quick": True, "timing": {"seconds_per_step": {"Adam": 0.01}}, "x": 1.5}
    for name, (module, _) in BENCHES.items():
        monkeypatch.setattr(module, "benchmark", lambda quick, device, log, n=name: dict(fake, name=n, device=device))
        monkeypatch.setattr(module, "report", lambda r: f"report of {r['name']}")
    assert main(["--quick", "--device", "cuda", "--report-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert all(f"report of {n}" in out.out for n in BENCHES) and f"{len(BENCHES)}/{len(BENCHES)} done" in out.err
    rows = rp.read_csv(tmp_path / "report.csv")
    assert {r["benchmark"] for r in rows} == set(BENCHES)
    assert rp.value(rows, "kfac", "device") == "cuda"
    assert json.loads((tmp_path / "soap-muon.json").read_text())["name"] == "soap-muon"
    assert (tmp_path / "report.html").exists()
    with pytest.raises(SystemExit):
        main(["nonsense"])


def test_progress_bar():
    assert progress_bar(1, 4, "kfac", started=0.0, width=8).startswith("[##......] 1/4 kfac")


def test_soap_muon_report_of_a_synthetic_result():
    p = soap_muon.protocol(quick=True)
    targets = [dict(adam_horizon=h, target=1.0 / h, adam_lr=1e-2, adam_steps=h - 1, adam_seconds=h * 7e-3,
                    soap_lr=1e-2, soap_steps=h // 4, soap_seconds=h * 2e-3, step_ratio=(h - 1) / (h // 4),
                    time_ratio=3.5) for h in p["horizons"]]
    muon = [dict(t, muon_lr=0.02, muon_steps=None, muon_seconds=None, step_ratio=None, time_ratio=None)
            for t in targets]
    timing = dict(seconds_per_step={"Adam": 7e-3, "natgrad SOAP": 9e-3, "heavyball SOAP": 1.8e-2}, blocks=4, block=10,
                  threads=1, theirs="heavyball 3.2.1", ours_vs_adam=9 / 7, ours_vs_theirs=0.5)
    r = dict(quick=True, device="cpu", machine=dict(torch="2.13.0", threads=1), protocol=p,
             tasks={"digits-autoencoder": dict(targets={"soap": targets, "muon": muon})}, timing=timing)
    r["goals"] = soap_muon.goals(r)
    text = soap_muon.report(r)
    assert "natgrad SOAP / heavyball SOAP (heavyball 3.2.1): 0.50x" in text
    assert "SOAP steps" in text and "Muon steps" in text and "n/a" in text
    assert r["goals"][0]["met"] is True and "MISSED" not in text


def test_side_by_side_with_heavyball():
    t = soap_muon.time_per_step(blocks=1, block=2, warmup_blocks=0)
    assert t["seconds_per_step"]["natgrad SOAP"] > 0 and t["ours_vs_adam"] > 0
    assert ("heavyball SOAP" in t["seconds_per_step"]) == (t["theirs"] != "not installed")


def test_report_only_rebuilds_the_report_from_stored_results(tmp_path, capsys):
    (tmp_path / "kfac.json").write_text(json.dumps({"quick": False, "x": 2.5}))
    from natgrad.bench import kfac

    original = kfac.report
    try:
        kfac.report = lambda r: "stored kfac"
        assert main(["kfac", "shampoo", "--report-only", "--report-dir", str(tmp_path)]) == 0
    finally:
        kfac.report = original
    assert "no shampoo.json" in capsys.readouterr().out
    assert rp.read_csv(tmp_path / "report.csv") == [{"benchmark": "kfac", "path": "quick", "value": False},
                                                    {"benchmark": "kfac", "path": "x", "value": 2.5}]
    assert "stored kfac" in (tmp_path / "report.html").read_text()


def test_stored_report_csv_is_that_of_the_stored_results():
    """docs/bench/report.csv (what `python -m natgrad.bench --report-only --report-dir docs/bench`
    writes) holds every scalar of the stored JSON results, exactly."""
    from tests.conftest import ROOT

    bench_dir = ROOT / "docs" / "bench"
    rows = rp.read_csv(bench_dir / "report.csv")
    expected = [row for name, (module, _) in BENCHES.items() if (bench_dir / f"{name}.json").exists()
                for row in rp.flatten(name, module.load(bench_dir / f"{name}.json"))]
    assert rows == expected
    stored = soap_muon.load(bench_dir / "soap-muon.json")
    assert not stored["quick"] and rp.value(rows, "soap-muon", "timing.ours_vs_theirs") == stored["timing"]["ours_vs_theirs"]
