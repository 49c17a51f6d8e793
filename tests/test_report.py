"""Plots and the HTML run report: written by a short real run, self-contained, and rendered by a real headless
Chromium (Debian's `chromium`, installed by .ci/run) with every image decoded and no console error."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scirl.cli import main as cli_main
from tests.conftest import small_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_PLOTS = {"reward", "val", "kl", "entropy", "response_length", "clip_fraction", "grad_norm", "timing"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One 2-step run: validations at steps 0 and 2 (the report is refreshed at each one, and at the end)."""
    tmp = tmp_path_factory.mktemp("report_run")
    assert cli_main(["train", *small_overrides(tmp)]) == 0
    return tmp / "t"


def _evals(run: Path) -> dict[int, dict]:
    return {int(p.stem.split("_")[1]): json.loads(p.read_text()) for p in (run / "eval").glob("step_*.json")}


def test_run_writes_valid_png_plots(run_dir):
    pngs = {p.stem: p for p in (run_dir / "plots").glob("*.png")}
    assert set(pngs) == EXPECTED_PLOTS
    for p in pngs.values():
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, p
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR
        assert width > 200 and height > 100, p
    assert not list((run_dir / "plots").glob(".*tmp*"))  # atomic writes leave nothing behind


def test_report_is_self_contained_with_the_runs_numbers(run_dir):
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', page, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert not re.search(r"https?://", page)  # nothing to fetch: the page opens offline
    assert page.count("<img ") == len(EXPECTED_PLOTS)
    assert '<b id="status">finished</b>' in page
    evals = _evals(run_dir)
    before, final = evals[0], evals[max(evals)]
    table = re.search(r'<table class="eval-table overall">(.*?)</table>', page, flags=re.S).group(1)
    assert f"final (step {final['step']})" in table and "before (step 0)" in table
    for name in ("mean@4", "pass@4", "maj@4"):
        row = re.search(rf"<tr><td>{re.escape(name)}</td><td>([^<]*)</td><td>([^<]*)</td>", table)
        assert row, name
        assert float(row.group(1)) == pytest.approx(before["metrics"][name], abs=5e-4)
        assert float(row.group(2)) == pytest.approx(final["metrics"][name], abs=5e-4)
    samples = [json.loads(line) for line in (run_dir / "eval" / f"step_{final['step']}_samples.jsonl").open()]
    first = samples[0]
    assert html.escape(first["response"], quote=True) in page  # responses are shown escaped, with their scores
    assert "<h2>Best groups</h2>" in page and "<h2>Worst groups</h2>" in page
    assert page.count('class="score"') >= len(samples) // 2
    assert "trainer.total_steps" not in page and "total_steps: 2" in page  # the resolved config, as YAML


def test_report_escapes_text_and_cli_rebuilds(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.rmtree(copy / "plots")
    (copy / "report.html").unlink()
    step = max(_evals(copy))
    path = copy / "eval" / f"step_{step}_samples.jsonl"
    rows = [json.loads(line) for line in path.open()]
    rows[0]["response"] = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli_main(["report", str(copy)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (copy / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page  # no script at all outside the test-only check mode
    assert {p.stem for p in (copy / "plots").glob("*.png")} == EXPECTED_PLOTS
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_refresh_failure_is_noted_once_and_never_raises(tmp_path):
    from scirl.publish.report import ReportRefresher

    notes = []
    bad = tmp_path / "not_a_dir"
    bad.write_text("x")  # plots/ cannot be created under a file
    refresh = ReportRefresher(bad, notes.append)
    refresh()
    refresh()
    assert len(notes) == 1 and "training goes on" in notes[0]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _check_marker(dom: str) -> dict:
    m = re.search(r'<div id="scirl-check"([^>]*)>', dom)
    assert m, "the check script did not run (no #scirl-check in the rendered DOM)"
    return dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_chromium_renders_report_with_all_images_and_no_console_error(run_dir, tmp_path):
    from scirl.publish.report import build_report

    page = build_report(run_dir, out=tmp_path / "report_check.html", check=True, plots=False)
    url = page.resolve().as_uri()
    res = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert res.returncode == 0, res.stderr[-2000:]
    check = _check_marker(res.stdout)
    widths = [int(w) for w in check["widths"].split(",")]
    assert int(check["images"]) == len(EXPECTED_PLOTS) and all(w > 0 for w in widths), check
    assert check["broken"] == "" and check["errors"] == "", check
    assert not _console_lines(res.stderr), _console_lines(res.stderr)
    assert res.stdout.count("<table") >= 2 and "mean@4" in res.stdout and "Best groups" in res.stdout

    shot = tmp_path / "shot.png"
    res = _chromium(tmp_path, "--window-size=1200,3000", "--hide-scrollbars", f"--screenshot={shot}",
                    (run_dir / "report.html").resolve().as_uri())
    assert res.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC), res.stderr[-2000:]
    assert not _console_lines(res.stderr), _console_lines(res.stderr)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_chromium_check_catches_a_broken_image_and_a_console_error(tmp_path):
    """The browser check is not vacuous: a page with an undecodable image and a script error fails it."""
    from scirl.publish.report import CHECK_SCRIPT

    bad = tmp_path / "bad.html"
    bad.write_text(f"<!DOCTYPE html><html><head>{CHECK_SCRIPT}</head><body>"
                   '<img alt="broken" src="data:image/png;base64,AAAA"><script>notDefined()</script></body></html>')
    res = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", bad.resolve().as_uri())
    check = _check_marker(res.stdout)
    assert check["broken"] == "broken" and "notDefined" in check["errors"]
    assert any("notDefined" in line for line in _console_lines(res.stderr))


def test_per_source_tables_and_only_the_plots_the_metrics_allow(tmp_path):
    """Two sources: a table and val curves per source; a run that logged no KL gets no kl.png."""
    from scirl.publish.report import build_report

    run = tmp_path / "multi"
    (run / "eval").mkdir(parents=True)
    rows = [{"step": s, "reward/mean": 0.1 * s, "reward/acc": 0.1 * s, "actor/grad_norm": 1.0 / s,
             "timing/rollout": 1.0, "timing/update": 0.5, "timing/step": 1.6} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    for step, (a, b) in {0: (0.25, 0.5), 2: (0.75, 0.125)}.items():
        by = {"srcA": {"mean@4": a, "pass@4": 1.0}, "srcB": {"mean@4": b, "pass@4": 0.5}}
        (run / "eval" / f"step_{step}.json").write_text(json.dumps(
            {"dataset": "mix-val", "n": 4, "metrics": {"mean@4": (a + b) / 2, "pass@4": 0.75}, "by_source": by}))
    (run / "eval" / "step_2_samples.jsonl").write_text("".join(json.dumps(
        {"prompt_id": f"p{i // 2}", "sample": i % 2, "response": f"r{i}", "score": float(i % 3 == 0),
         "correct": i % 3 == 0, "pred": "1", "answer": "1", "question": f"q & {i // 2}"}) + "\n" for i in range(6)))
    build_report(run)
    assert {p.stem for p in (run / "plots").glob("*.png")} == {"reward", "val", "grad_norm", "timing"}
    page = (run / "report.html").read_text()
    for src, (a, b) in {"srcA": (0.25, 0.75), "srcB": (0.5, 0.125)}.items():
        table = re.search(rf'<table class="eval-table source-{src}">(.*?)</table>', page, flags=re.S).group(1)
        assert f"<tr><td>mean@4</td><td>{a:.4g}</td><td>{b:.4g}</td>" in table
    assert "q &amp; 0" in page and "status <b id=\"status\">running</b>" in page
