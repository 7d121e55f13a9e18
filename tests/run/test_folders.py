"""Run folders: `version_N` claimed atomically, found again from a checkpoint, history kept on resume.

Plain unit tests of `medkor.run.folders` and `medkor.run.loggers`, with real processes
racing for folders and Lightning's real `CSVLogger` / `TensorBoardLogger` on an
existing run folder.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import warnings
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from medkor.run.folders import (
    claim_version,
    find_last_checkpoint,
    logged_before,
    trim_metrics,
    version_of_checkpoint,
    versions,
)
from medkor.run.loggers import assign_versions, continue_history

# ---------------------------------------------------------------- claim_version


def _claim_after_barrier(root: str, barrier, claims: int, out) -> None:
    barrier.wait()  # every process leaves the barrier together, then races for folders
    for _ in range(claims):
        out.put(claim_version(Path(root)))


def _race(root: Path, processes: int, claims: int = 1) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_claim_after_barrier, args=(str(root), barrier, claims, out))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    got = [out.get(timeout=60) for _ in range(processes * claims)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return got


def test_claim_version_creates_the_root_and_counts_from_zero(tmp_path):
    root = tmp_path / "logs" / "demo"  # nothing exists yet
    assert [claim_version(root) for _ in range(3)] == [0, 1, 2]
    assert versions(root) == [0, 1, 2]
    assert all((root / f"version_{n}").is_dir() for n in range(3))


def test_eight_processes_started_together_claim_eight_distinct_versions(tmp_path):
    root = tmp_path / "demo"
    got = _race(root, processes=8)
    assert sorted(got) == list(range(8)), got  # distinct, and no number skipped
    assert versions(root) == list(range(8))


def test_repeated_races_never_hand_out_a_version_twice(tmp_path):
    root = tmp_path / "demo"
    # many claims each keep the processes contending (a list-then-create claim fails this every time)
    got = _race(root, processes=8, claims=25)
    assert len(got) == len(set(got)) == 200
    assert sorted(got) == list(range(200))


def test_racing_claims_go_past_existing_versions_gaps_and_files(tmp_path):
    root = tmp_path / "demo"
    for n in (0, 3, 7):
        (root / f"version_{n}").mkdir(parents=True)
    (root / "version_8").write_text("not a folder")  # a file of that name blocks the folder
    (root / "version_x").mkdir()
    (root / "notes").mkdir()
    got = _race(root, processes=8)
    # gaps below the highest version are never reused: a new run always sorts after the old ones
    assert sorted(got) == list(range(9, 17)), got
    assert (root / "version_8").is_file()
    assert not any((root / f"version_{n}").exists() for n in (1, 2, 4, 5, 6))


# ---------------------------------------------------------------- version_of_checkpoint


def test_version_of_checkpoint_inside_the_root(tmp_path):
    root = tmp_path / "logs" / "demo"
    ckpt = root / "version_3" / "checkpoints" / "epoch00-step2.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert version_of_checkpoint(ckpt, root) == 3
    # the file need not exist yet, and `..` in the path is followed
    assert version_of_checkpoint(root / "version_12" / "checkpoints" / "last.ckpt", root) == 12
    assert version_of_checkpoint(root / "version_3" / ".." / "version_5" / "checkpoints" / "a.ckpt", root) == 5


@pytest.mark.parametrize("where", [
    "other/demo/version_1/checkpoints/last.ckpt",      # another root
    "logs/version_1/checkpoints/last.ckpt",            # the root's parent
    "logs/demo/version_1/last.ckpt",                   # not in checkpoints/
    "logs/demo/version_1/checkpoints/sub/last.ckpt",   # below checkpoints/
    "logs/demo/run_1/checkpoints/last.ckpt",           # not a version folder
    "logs/demo/version_one/checkpoints/last.ckpt",
    "logs/demo/nested/version_1/checkpoints/last.ckpt",
    "last.ckpt",
])
def test_version_of_checkpoint_outside_the_root_is_none(tmp_path, where):
    assert version_of_checkpoint(tmp_path / where, tmp_path / "logs" / "demo") is None


def test_version_of_checkpoint_with_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "logs" / "demo" / "version_2" / "checkpoints").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    rel_ckpt = Path("logs/demo/version_2/checkpoints/last.ckpt")
    assert version_of_checkpoint(rel_ckpt, Path("logs/demo")) == 2
    assert version_of_checkpoint(rel_ckpt, tmp_path / "logs" / "demo") == 2
    assert version_of_checkpoint(tmp_path / rel_ckpt, Path("logs/demo")) == 2
    assert version_of_checkpoint(Path("./logs/../logs/demo/version_2/checkpoints/last.ckpt"), Path("logs/demo/")) == 2
    assert version_of_checkpoint(rel_ckpt, Path("logs")) is None


def test_version_of_checkpoint_through_a_symlinked_root(tmp_path):
    real = tmp_path / "storage" / "demo"
    ckpt = real / "version_4" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    link = tmp_path / "logs"
    link.symlink_to(tmp_path / "storage")
    assert version_of_checkpoint(link / "demo" / "version_4" / "checkpoints" / "last.ckpt", real) == 4
    assert version_of_checkpoint(ckpt, link / "demo") == 4
    assert version_of_checkpoint(link / "demo" / "version_4" / "checkpoints" / "last.ckpt", link / "demo") == 4


def test_version_of_a_last_link_next_to_its_target(tmp_path):
    # ModelCheckpoint(save_last="link") makes last.ckpt a relative link to a checkpoint of the same folder
    folder = tmp_path / "demo" / "version_1" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "epoch01-step12.ckpt").write_bytes(b"x")
    (folder / "last.ckpt").symlink_to("epoch01-step12.ckpt")
    assert version_of_checkpoint(folder / "last.ckpt", tmp_path / "demo") == 1


def test_version_of_checkpoint_in_a_symlinked_checkpoints_folder(tmp_path):
    root = tmp_path / "logs" / "demo"
    (root / "version_0").mkdir(parents=True)
    scratch = tmp_path / "scratch" / "run0"
    scratch.mkdir(parents=True)
    (root / "version_0" / "checkpoints").symlink_to(scratch)
    (scratch / "last.ckpt").write_bytes(b"x")
    found = find_last_checkpoint(root)
    assert found == root / "version_0" / "checkpoints" / "last.ckpt"
    assert version_of_checkpoint(found, root) == 0


# ---------------------------------------------------------------- find_last_checkpoint


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(b"checkpoint")
    os.utime(path, (mtime, mtime))
    return path


def test_find_last_checkpoint_takes_the_newest_across_versions(tmp_path):
    root = tmp_path / "demo"
    t = 1_700_000_000
    _touch(root / "version_0" / "checkpoints" / "last.ckpt", t + 30)
    _touch(root / "version_1" / "checkpoints" / "last.ckpt", t + 10)
    newest = _touch(root / "version_2" / "checkpoints" / "last-v1.ckpt", t + 40)
    _touch(root / "version_2" / "checkpoints" / "last.ckpt", t + 20)
    (root / "version_3").mkdir()  # a run that never saved: no checkpoints/ folder
    assert find_last_checkpoint(root) == newest
    os.utime(root / "version_0" / "checkpoints" / "last.ckpt", (t + 50, t + 50))
    assert find_last_checkpoint(root) == root / "version_0" / "checkpoints" / "last.ckpt"  # by mtime, not number


def test_find_last_checkpoint_ignores_temp_files_and_other_checkpoints(tmp_path):
    root = tmp_path / "demo"
    t = 1_700_000_000
    last = _touch(root / "version_0" / "checkpoints" / "last.ckpt", t)
    folder = last.parent
    # newer, but none of them is a finished last checkpoint
    for name in [".last.ckpt.tmp-4242-0123abcd", ".last-v1.ckpt.tmp-17-deadbeef", "epoch00-step2.ckpt",
                 "last.ckpt.bak", "lastly.ckpt", "step6-last.ckpt", "last.pt"]:
        _touch(folder / name, t + 100)
    _touch(root / "old_run" / "checkpoints" / "last.ckpt", t + 200)  # not a version folder
    _touch(root / "version_1" / "last.ckpt", t + 200)  # not in checkpoints/
    assert find_last_checkpoint(root) == last


def test_find_last_checkpoint_of_a_sharded_run_is_a_folder(tmp_path):
    root = tmp_path / "demo"
    t = 1_700_000_000
    _touch(root / "version_0" / "checkpoints" / "last.ckpt", t)
    sharded = root / "version_1" / "checkpoints" / "last.ckpt"
    sharded.mkdir(parents=True)
    (sharded / "meta.pt").write_bytes(b"x")
    os.utime(sharded, (t + 5, t + 5))
    assert find_last_checkpoint(root) == sharded


def test_find_last_checkpoint_when_there_is_none(tmp_path):
    assert find_last_checkpoint(tmp_path / "missing") is None
    root = tmp_path / "demo"
    _touch(root / "version_0" / "checkpoints" / "epoch00-step2.ckpt", 1_700_000_000)
    _touch(root / "version_0" / "checkpoints" / ".last.ckpt.tmp-1-00000000", 1_700_000_000)
    assert find_last_checkpoint(root) is None


# ---------------------------------------------------------------- trim_metrics / logged_before

# A metrics.csv as Lightning's CSVLogger writes it for the demo (sorted header): KorMedMCQA
# baseline at step 0, a train row per step, validation and KorMedMCQA after epoch 0 (step 3),
# then the rows of steps 3.. that an attempt killed after the checkpoint at step 3 had logged.
HEADER = ["epoch", "kormedmcqa/acc", "kormedmcqa/doctor/acc", "kormedmcqa/seconds", "step",
          "train/loss", "train/lr", "val/loss"]
ROWS = [
    # epoch, acc, doctor, seconds, step, train/loss, train/lr, val/loss
    ["", "0.25", "0.5", "0.0904100269999617", "0", "", "", ""],          # baseline at 0: kept
    ["0", "", "", "", "0", "7.647752285003662", "0.00033333332976326346", ""],
    ["0", "", "", "", "1", "7.63856315612793", "0.0005000000237487257", ""],
    ["0", "", "", "", "2", "7.60", "0.0006", ""],
    ["0", "", "", "", "2", "", "", "7.602516174316406"],                # val before step 3: kept
    ["", "0.375", "0.25", "0.04363716399984696", "3", "", "", ""],       # KorMedMCQA at 3: kept
    ["", "", "", "", "", "", "", ""],                                     # no step at all: kept
    ["1", "", "", "", "3", "7.51", "0.0007", ""],                         # train at 3: after the save
    ["1", "", "", "", "3", "", "", "7.55"],                               # val at 3: after the save
    ["1", "", "", "", "4", "7.40", "0.0008", ""],
    ["", "0.5", "0.5", "0.05", "6", "", "", ""],                          # KorMedMCQA at 6
]
KEPT = [0, 1, 2, 3, 4, 5, 6]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def test_logged_before():
    row = dict.fromkeys(HEADER, "")
    assert logged_before({**row, "step": "2", "train/loss": "7.1"}, 3)
    assert not logged_before({**row, "step": "3", "train/loss": "7.1"}, 3)
    assert not logged_before({**row, "step": "3", "val/loss": "7.1"}, 3)
    assert logged_before({**row, "step": "3", "kormedmcqa/acc": "0.5"}, 3)
    assert not logged_before({**row, "step": "4", "kormedmcqa/acc": "0.5"}, 3)
    assert logged_before({**row, "step": "3.0", "kormedmcqa/acc": "0.5"}, 3)
    assert logged_before({**row, "step": ""}, 0)
    assert logged_before({k: v for k, v in row.items() if k != "step"}, 0)


def test_trim_metrics_keeps_what_came_before_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.csv"
    _write_csv(path, HEADER, ROWS)
    header, dropped = trim_metrics(path, 3)
    assert header == HEADER
    assert dropped == len(ROWS) - len(KEPT)
    got_header, got_rows = _read_csv(path)
    assert got_header == HEADER
    assert got_rows == [ROWS[i] for i in KEPT]  # values as they were, string for string
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temp file left


def test_trim_metrics_at_step_zero_keeps_only_the_baseline(tmp_path):
    path = tmp_path / "metrics.csv"
    _write_csv(path, HEADER, ROWS)
    assert trim_metrics(path, 0)[1] == len(ROWS) - 2
    assert _read_csv(path)[1] == [ROWS[0], ROWS[6]]


def test_trim_metrics_sorts_an_unsorted_header(tmp_path):
    path = tmp_path / "metrics.csv"
    order = [7, 4, 0, 5, 1, 3, 2, 6]  # val/loss, step, epoch, train/loss, ...
    _write_csv(path, [HEADER[i] for i in order], [[r[i] for i in order] for r in ROWS])
    header, dropped = trim_metrics(path, 3)
    assert header == HEADER and dropped == len(ROWS) - len(KEPT)
    assert _read_csv(path) == (HEADER, [ROWS[i] for i in KEPT])
    # nothing to drop, but the header is out of order: still rewritten sorted, every row kept
    _write_csv(path, [HEADER[i] for i in order], [[r[i] for i in order] for r in ROWS])
    assert trim_metrics(path, None) == (HEADER, 0)
    assert _read_csv(path) == (HEADER, ROWS)


@pytest.mark.parametrize("last_step", [None, 6, 100])
def test_trim_metrics_leaves_the_file_untouched_when_nothing_is_dropped(tmp_path, last_step):
    path = tmp_path / "metrics.csv"
    _write_csv(path, HEADER, ROWS[:6] if last_step == 6 else ROWS)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before, stat = path.read_bytes(), path.stat()
    assert trim_metrics(path, last_step) == (HEADER, 0)
    after = path.stat()
    assert path.read_bytes() == before
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_trim_metrics_of_a_missing_file(tmp_path):
    assert trim_metrics(tmp_path / "metrics.csv", 3) == ([], 0)
    assert not (tmp_path / "metrics.csv").exists()


# ---------------------------------------------------------------- continue_history with Lightning's loggers


def _first_attempt(save_dir: Path, steps: range) -> Path:
    """A run folder as a first attempt leaves it: metrics.csv, hparams.yaml, checkpoints/."""
    logger = CSVLogger(save_dir, name="demo")
    assign_versions([logger])
    logger.log_hyperparams({"learning_rate": 1e-3})
    logger.log_metrics({"kormedmcqa/acc": 0.25}, step=0)
    for step in steps:
        logger.log_metrics({"train/loss": 8.0 - step / 10, "epoch": step // 3}, step=step)
        if step % 3 == 2:
            logger.log_metrics({"val/loss": 7.5 - step / 10, "epoch": step // 3}, step=step)
    logger.log_metrics({"kormedmcqa/acc": 0.5}, step=3)
    logger.finalize("success")
    run = Path(logger.log_dir)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "step3.ckpt").write_bytes(b"x")
    return run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _train_steps(rows: list[dict[str, str]]) -> list[int]:
    return [int(r["step"]) for r in rows if r.get("train/loss")]


def test_lightning_csv_logger_alone_deletes_the_history(tmp_path):
    # why continue_history exists: a CSVLogger opened on an existing run folder removes metrics.csv
    run = _first_attempt(tmp_path, range(6))
    logger = CSVLogger(tmp_path, name="demo", version=0)
    with pytest.warns(UserWarning, match="will be deleted"):
        logger.experiment
    assert not (run / "metrics.csv").exists()


def _resume(save_dir: Path, last_step: int, loggers=None):
    loggers = loggers or [CSVLogger(save_dir, name="demo")]
    root = Path(loggers[0].root_dir)
    assert assign_versions(loggers, keep=(root, 0)) == {root: 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dropped = continue_history(loggers, last_step)
        for logger in loggers:
            logger.experiment  # opened already: nothing more may be deleted or warned about
    assert not [w for w in caught if "will be deleted" in str(w.message)], [str(w.message) for w in caught]
    return loggers, dropped


def test_continue_history_keeps_rows_up_to_the_step_and_appends(tmp_path):
    run = _first_attempt(tmp_path, range(6))  # killed after the checkpoint at step 3, with steps 3..5 logged
    header = list(_rows(run / "metrics.csv")[0])
    (logger,), dropped = _resume(tmp_path, 3)
    assert logger.log_dir == str(run)
    assert dropped == 4  # train rows of steps 3, 4, 5 and the validation at 5
    kept = _rows(run / "metrics.csv")
    assert _train_steps(kept) == [0, 1, 2]
    assert [r["step"] for r in kept if r["kormedmcqa/acc"]] == ["0", "3"]

    for step in range(3, 6):  # the resumed run logs the same steps again
        logger.log_metrics({"train/loss": 6.0 - step / 10, "epoch": step // 3}, step=step)
    logger.save()
    rows = _rows(run / "metrics.csv")
    assert list(rows[0]) == header  # same header, appended below it
    assert rows[:len(kept)] == kept
    assert _train_steps(rows) == [0, 1, 2, 3, 4, 5]  # each step exactly once
    assert [r["train/loss"] for r in rows[len(kept):]] == ["5.7", "5.6", "5.5"]
    with (run / "metrics.csv").open(encoding="utf-8") as f:
        assert sum(1 for line in f if line.startswith("epoch,")) == 1
    assert (run / "hparams.yaml").is_file() and (run / "checkpoints" / "step3.ckpt").is_file()


def test_continue_history_when_a_new_metric_appears_later(tmp_path):
    run = _first_attempt(tmp_path, range(6))
    (logger,), _ = _resume(tmp_path, 3)
    kept = _rows(run / "metrics.csv")
    logger.log_metrics({"train/loss": 5.7, "epoch": 1}, step=3)
    logger.save()
    # a key the first attempt never logged: Lightning rewrites the file with the wider header
    logger.log_metrics({"train/loss": 5.6, "epoch": 1, "train/tokens_per_sec": 6427.5}, step=4)
    logger.log_metrics({"kormedmcqa/doctor/acc": 1.0, "kormedmcqa/acc": 0.75}, step=6)
    logger.save()
    logger.log_metrics({"train/loss": 5.5, "epoch": 2}, step=5)
    logger.finalize("success")
    header, _ = _read_csv(run / "metrics.csv")
    assert header == sorted(header)
    assert {"train/tokens_per_sec", "kormedmcqa/doctor/acc"} <= set(header)
    rows = _rows(run / "metrics.csv")
    old = [{k: r.get(k, "") for k in header} for r in kept]
    assert rows[:len(kept)] == old  # the rows before the checkpoint survive the rewrite
    assert _train_steps(rows) == [0, 1, 2, 3, 4, 5]
    assert [(r["step"], r["kormedmcqa/acc"]) for r in rows if r["kormedmcqa/acc"]] == [("0", "0.25"), ("3", "0.5"),
                                                                                       ("6", "0.75")]
    assert [r["train/tokens_per_sec"] for r in rows if r["train/tokens_per_sec"]] == ["6427.5"]


def test_continue_history_with_tensorboard_in_the_same_folder(tmp_path):
    run = _first_attempt(tmp_path, range(6))
    csv_logger, tb_logger = CSVLogger(tmp_path, name="demo"), TensorBoardLogger(tmp_path, name="demo")
    (csv_logger, tb_logger), dropped = _resume(tmp_path, 3, [csv_logger, tb_logger])
    assert dropped == 4  # counted once, though both loggers write into the folder
    assert tb_logger.log_dir == csv_logger.log_dir == str(run)
    assert tb_logger._kwargs["purge_step"] == 4  # TensorBoard drops the events after step 3
    assert _train_steps(_rows(run / "metrics.csv")) == [0, 1, 2]
    csv_logger.log_metrics({"train/loss": 5.7}, step=3)
    csv_logger.save()
    assert _train_steps(_rows(run / "metrics.csv")) == [0, 1, 2, 3]


def test_continue_history_in_tensorboard_first_order(tmp_path):
    run = _first_attempt(tmp_path, range(6))
    loggers, dropped = _resume(tmp_path, 3, [TensorBoardLogger(tmp_path, name="demo"), CSVLogger(tmp_path, name="demo")])
    assert dropped == 4
    loggers[1].log_metrics({"train/loss": 5.7}, step=3)
    loggers[1].save()
    assert _train_steps(_rows(run / "metrics.csv")) == [0, 1, 2, 3]


def test_continue_history_without_a_step_keeps_every_row(tmp_path):
    run = _first_attempt(tmp_path, range(6))
    before = _rows(run / "metrics.csv")
    (logger,), dropped = _resume(tmp_path, None)
    assert dropped == 0
    assert _rows(run / "metrics.csv") == before


def test_continue_history_leaves_an_opened_logger_and_a_fresh_folder_alone(tmp_path):
    fresh = CSVLogger(tmp_path, name="fresh")
    assign_versions([fresh])
    assert continue_history([fresh], 3) == 0  # no metrics.csv yet: nothing to keep
    assert fresh._experiment is None
    run = _first_attempt(tmp_path, range(6))
    opened = CSVLogger(tmp_path, name="demo", version=0)
    opened._experiment = object()  # already writing: not reopened, nothing trimmed
    before = (run / "metrics.csv").read_bytes()
    assert continue_history([opened], 3) == 0
    assert (run / "metrics.csv").read_bytes() == before


def test_assign_versions_claims_keeps_and_respects_fixed_versions(tmp_path):
    csv_logger, tb_logger = CSVLogger(tmp_path, name="demo"), TensorBoardLogger(tmp_path, name="demo")
    root = tmp_path / "demo"
    assert assign_versions([csv_logger, tb_logger]) == {root: 0}
    assert csv_logger.version == tb_logger.version == 0  # one folder for both
    assert assign_versions([CSVLogger(tmp_path, name="demo")]) == {root: 1}
    assert assign_versions([CSVLogger(tmp_path, name="demo")], keep=(root, 0)) == {root: 0}
    assert assign_versions([CSVLogger(tmp_path, name="demo", version=7)]) == {root: 7}
    other = CSVLogger(tmp_path, name="other")
    assert assign_versions([other], keep=(root, 0)) == {tmp_path / "other": 0}  # claimed: a different root
    assert versions(root) == [0, 1]
