"""Progress (issue 10, Deliver 9): structured events, plain lines off a terminal, --quiet, --json."""

from __future__ import annotations

import json

from ristretto_onnx.cli import main
from ristretto_onnx.cli.progress import Reporter
from ristretto_onnx.compress import compress
from ristretto_onnx.events import ProgressEvent
from ristretto_onnx.zoo.store import package_dir


class Recorder(list):
    """A ``log`` sink that keeps lines and structured events."""

    def __call__(self, message: str) -> None:
        self.append(message)

    def event(self, event: ProgressEvent) -> None:
        self.append(event)


def test_compress_reports_structured_events():
    sink = Recorder()
    result = compress("zoo:digits-cnn", log=sink)
    events = [e for e in sink if isinstance(e, ProgressEvent)]
    assert [e.stage for e in events][:3] == ["prepare", "ranges", "baseline"]
    search = [e for e in events if e.stage == "search" and e.plans_scored]
    assert [e.plans_scored for e in search] == list(range(1, result.report.plans_scored + 1))
    assert search[-1].evaluations == result.report.evaluations and search[-1].scheme == "dfp"
    assert search[-1].best.startswith("combine ") and f"(metric {result.report.final:.4f})" in search[-1].best
    assert events[-1].stage == "write"
    assert any(isinstance(m, str) and m.startswith("baseline top1 0.9840") for m in sink)


def test_plain_lines_off_a_terminal_and_the_live_panel(capsys):
    with Reporter(live=False) as log:
        log.event(ProgressEvent("prepare", "checking"))  # silent: a bad model gets one error line
        log.event(ProgressEvent("search", "x", "dfp", 3, 2.5, "category conv 4-bit"))
        log("category  conv_weights  4-bit  ok")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith("[3 plans, 2.5 evals] category  conv_weights  4-bit  ok")
    with Reporter(quiet=True) as log:
        log("anything")
        log.event(ProgressEvent("ranges", "range analysis"))
    assert capsys.readouterr().err == ""
    reporter = Reporter(live=True)
    reporter.event(ProgressEvent("search", "x", "dfp", 7, 5.25, "combine all (metric 0.9820)"))
    reporter.event(ProgressEvent("write", "writing"))  # keeps the counters on display
    from rich.console import Console

    console = Console(width=120, record=True, file=open("/dev/null", "w"))
    console.print(reporter._render())
    text = console.export_text()
    assert "write (dfp)" in text and "7" in text and "5.2" in text and "combine all (metric 0.9820)" in text


def test_json_prints_the_report_to_stdout(tmp_path, capsys):
    out = tmp_path / "d.onnx"
    assert main(["compress", "zoo:digits-cnn", str(out), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {**json.loads(out.with_suffix(".json").read_text())}
    assert captured.err == ""
    assert package_dir().is_dir()
