"""`medkor plot RUN_DIR [--out FILE.png]`: losses and KorMedMCQA accuracy of a run in one picture."""

from __future__ import annotations

import argparse
import sys

from medkor.eval.plot import PlotError, plot_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medkor plot",
        allow_abbrev=False,
        description="Plot training/validation loss and KorMedMCQA accuracy (overall and per subset) over "
        "steps from a run folder's metrics.csv, the baseline marked. Works while the run is still going.",
    )
    parser.add_argument("run_dir", help="run folder holding metrics.csv, e.g. lightning_logs/demo/version_0")
    parser.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/metrics.png)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out)
    except PlotError as error:
        print(f"medkor plot: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0
