import json

import pytest

from medkor.commands.plot import main
from medkor.eval.plot import PlotError, find_metrics, plot_run, read_metrics

HEADER = "epoch,kormedmcqa/acc,kormedmcqa/doctor/acc,kormedmcqa/nurse/acc,kormedmcqa/seconds,step,train_loss,val_loss\n"
ROWS = [
    "0,0.25,0.2,0.3,1.5,0,,\n",
    "0,,,,,0,5.1,\n",
    "0,,,,,1,4.8,\n",
    "0,,,,,1,,4.9\n",
    "0,0.4,0.5,0.3,1.2,1,,\n",
]


def write_run(folder, rows=ROWS, partial=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.csv").write_text(HEADER + "".join(rows) + partial, encoding="utf-8")
    return folder


def test_read_metrics_by_column_and_step(tmp_path):
    series = read_metrics(write_run(tmp_path / "run", partial="1,0.5,") / "metrics.csv")
    assert series["kormedmcqa/acc"] == [(0, 0.25), (1, 0.4)]
    assert series["train_loss"] == [(0, 5.1), (1, 4.8)] and series["val_loss"] == [(1, 4.9)]
    assert "epoch" not in series and "step" not in series


def test_plot_writes_a_png_with_the_baseline_from_the_summary(tmp_path):
    run = write_run(tmp_path / "run")
    (run / "kormedmcqa").mkdir()
    (run / "kormedmcqa" / "summary.json").write_text(json.dumps({"baseline": {"step": 0, "acc": 0.25}}))
    out = plot_run(run)
    assert out == run / "metrics.png" and out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000


def test_command_line(tmp_path, capsys):
    run = write_run(tmp_path / "logs" / "version_3", partial="2,")  # a run still writing
    assert main([str(run), "--out", str(tmp_path / "x" / "plot.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "x" / "plot.png")
    assert main([str(tmp_path / "logs")]) == 2
    assert "no metrics.csv here" in capsys.readouterr().err
    with pytest.raises(PlotError, match="newest run is .*version_3"):
        find_metrics(tmp_path / "logs")
    with pytest.raises(PlotError, match="no such run folder"):
        find_metrics(tmp_path / "missing")
    empty = write_run(tmp_path / "empty", rows=[])
    with pytest.raises(PlotError, match="no loss or kormedmcqa"):
        plot_run(empty)
