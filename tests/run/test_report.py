"""The lines a run prints: KorMedMCQA with its change since the baseline, every validation loss."""

from __future__ import annotations

from medkor.eval.predictions import evaluation_entry
from medkor.run.report import evaluation_line, validation_losses


def test_evaluation_line_gives_subsets_with_n_the_change_and_every_validation_loss():
    baseline = evaluation_entry("baseline", 0, 0, {"doctor": (3, 12), "nurse": (6, 12)}, 0.4, "b.jsonl")
    later = evaluation_entry("fit", 1, 48, {"doctor": (6, 12), "nurse": (6, 12)}, 0.3, "f.jsonl")
    losses = validation_losses({"val/plain_text/loss": 7.0, "train/loss": 1.0, "val/loss": 6.5})
    assert list(losses) == ["val/loss", "val/plain_text/loss"]
    line = evaluation_line(later, baseline, losses)
    assert line.startswith("KorMedMCQA (epoch 1, step 48): acc 0.500 (12/24, +0.125 since baseline)")
    assert "doctor 0.500 n=12 (+0.250), nurse 0.500 n=12 (+0.000)" in line
    assert "val/loss 6.5000, val/plain_text/loss 7.0000" in line
    first = evaluation_line(baseline, None)
    assert first.startswith("KorMedMCQA baseline (step 0): acc 0.375 (9/24)") and "since" not in first


def test_a_resume_counts_its_own_steps_and_names_epochs_as_fit_does(repo_root, tmp_path, monkeypatch, capsys):
    """fit 1 epoch of 3 steps, validate its last.ckpt, resume to 2 epochs: the lines a user reads."""
    import warnings

    import torch

    from medkor.lightning_cli import run_cli
    from tests.run.resume_config import resume_config, write_config

    monkeypatch.chdir(repo_root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = resume_config(repo_root, tmp_path / "logs", epochs=1, steps_per_epoch=3, extra_callbacks=[])
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    threads = torch.get_num_threads()
    try:
        run_cli(["fit", "--config", str(write_config(config, tmp_path / "one.yaml"))])
        first = capsys.readouterr().out
        last = tmp_path / "logs/demo/version_0/checkpoints/last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1  # Lightning's: epochs completed
        run_cli(["validate", "--config", str(tmp_path / "one.yaml"), "--ckpt_path", str(last)])
        validated = capsys.readouterr().out
        config["trainer"]["max_epochs"] = 2
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_cli(["fit", "--config", str(write_config(config, tmp_path / "two.yaml")), "--ckpt_path", str(last)])
        resumed = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    assert "KorMedMCQA (epoch 0, step 3)" in first
    assert "done: 1 epoch, 3 optimizer steps in " in first
    assert "KorMedMCQA validate (epoch 0, step 3) of " in validated  # the epoch fit gave the same state
    assert "KorMedMCQA (epoch 1, step 6)" in resumed
    assert "done: 2 epochs, 6 optimizer steps (3 in this process, " in resumed
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]


def test_last_step_epoch_reads_the_epochs_started():
    from medkor.run.report import last_step_epoch, steps_text

    def progress(started: int) -> dict:
        return {"fit_loop": {"epoch_progress": {"current": {"started": started}}}}

    assert last_step_epoch({"epoch": 1, "loops": progress(1)}) == 0  # written after epoch 0 ended
    assert last_step_epoch({"epoch": 2, "loops": progress(3)}) == 2  # inside epoch 2
    assert last_step_epoch({"epoch": 4}) == 4  # no loop state: Lightning's number
    assert steps_text(1, 24, 24, 5.6) == "1 epoch, 24 optimizer steps in 6 s"


def test_the_suggested_commands_repeat_the_runs_model_and_data_options(tmp_path):
    from medkor.run.report import carried_overrides, fit_end_lines

    argv = ["fit", "--config", "a.yaml", "--data.data_dir", "/d", "--trainer.max_steps", "5",
            "--model.learning_rate=0.1", "--data.overwrite_cache", "true", "--data.packing", "false"]
    carried = carried_overrides(argv)
    assert carried == ["--data.data_dir", "/d", "--model.learning_rate=0.1", "--data.packing", "false"]
    lines = fit_end_lines(tmp_path, "last.ckpt", None, "best", None, ["a.yaml"], "1 epoch", carried)
    validate = next(line for line in lines if "medkor validate" in line)
    assert validate.strip() == ("medkor validate --config a.yaml --data.data_dir /d --model.learning_rate=0.1 "
                                "--data.packing false --ckpt_path last.ckpt")
    assert any("medkor export --config a.yaml --data.data_dir /d" in line for line in lines)
