import csv
import json

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from medkor.callbacks import KorMedMCQAEval
from tests.eval.tiny_lm import build_model


class TinyModule(pl.LightningModule):
    """Stands in for MedGemmaModule: `.model` (HF causal LM) and `.tokenizer`, a plain LM loss."""

    def __init__(self, tokenizer, seed=0):
        super().__init__()
        self.model = build_model(tokenizer, seed=seed).train()
        self.tokenizer = tokenizer
        self.modes = []

    def training_step(self, batch, batch_idx):
        self.modes.append(self.model.training)
        loss = self.model(input_ids=batch, labels=batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(input_ids=batch, labels=batch).loss)

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.5)


def loader(tokenizer):
    text = "고혈압 환자에게 가장 먼저 투여하는 약물은 무엇인가? 당뇨병의 합병증으로 옳은 것은?"
    ids = tokenizer(text)["input_ids"][:16]
    return torch.utils.data.DataLoader([torch.tensor(ids)] * 4, batch_size=2)


def trainer(root, max_epochs, callbacks, version=None):
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=CSVLogger(root, name="run", version=version),
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
    )


def csv_rows(path):
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def acc_by_step(run_dir, key="kormedmcqa/acc"):
    return {int(r["step"]): float(r[key]) for r in csv_rows(run_dir / "metrics.csv") if r.get(key)}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_fit_logs_baseline_at_step_0_and_every_epoch(tmp_path, tokenizer, sample_dir):
    module = TinyModule(tokenizer)
    callback = KorMedMCQAEval(source=str(sample_dir), batch_size=4)
    fit = trainer(tmp_path, 2, [callback])
    fit.fit(module, loader(tokenizer), loader(tokenizer))
    run = tmp_path / "run" / "version_0"

    accs = acc_by_step(run)
    assert sorted(accs) == [0, 2, 4]
    for subset in ("doctor", "nurse", "pharm", "dentist"):
        assert sorted(acc_by_step(run, f"kormedmcqa/{subset}/acc")) == [0, 2, 4]
    assert all(float(v) >= 0 for v in acc_by_step(run, "kormedmcqa/seconds").values())
    assert all(module.modes) and len(module.modes) == 4  # training ran in train mode after each evaluation

    files = sorted(p.name for p in (run / "kormedmcqa").glob("*.jsonl"))
    assert files == ["baseline-epoch000-step0000000.jsonl", "fit-epoch000-step0000002.jsonl", "fit-epoch001-step0000004.jsonl"]
    last = read_jsonl(run / "kormedmcqa" / files[-1])
    assert len(last) == 15 and [r["subset"] for r in last[:5]] == ["doctor"] * 5
    # every logprob equals an independent fp32 forward of the final model on the recorded ids
    model = module.model.eval()
    for record in last:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([record["prompt_ids"]])).logits[0, -1].log_softmax(-1)
        for letter, value in record["logprobs"].items():
            assert value == pytest.approx(logits[record["letter_ids"][letter]].item(), abs=1e-4)
        assert record["pred"] == max(record["logprobs"], key=record["logprobs"].get)
        assert tokenizer(record["prompt"])["input_ids"] == record["prompt_ids"]
    assert accs[4] == pytest.approx(sum(r["pred"] == r["answer"] for r in last) / len(last))
    baseline_file = read_jsonl(run / "kormedmcqa" / files[0])
    assert accs[0] == pytest.approx(sum(r["pred"] == r["answer"] for r in baseline_file) / 15)
    assert baseline_file != last  # training moved the model

    summary = json.loads((run / "kormedmcqa" / "summary.json").read_text(encoding="utf-8"))
    assert summary["baseline"]["step"] == 0 and summary["baseline"]["acc"] == pytest.approx(accs[0])
    assert [e["step"] for e in summary["evaluations"]] == [2, 4]
    assert summary["latest"]["change"]["acc"] == pytest.approx(accs[4] - accs[0])
    assert summary["settings"]["subsets"] == ["doctor", "nurse", "pharm", "dentist"]


def test_resume_keeps_the_stored_baseline_unless_asked(tmp_path, tokenizer, sample_dir):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = trainer(tmp_path, 1, [KorMedMCQAEval(source=str(sample_dir), max_samples=2), checkpoint], version="a")
    first.fit(TinyModule(tokenizer), loader(tokenizer))
    stored = json.loads((tmp_path / "run" / "a" / "kormedmcqa" / "summary.json").read_text(encoding="utf-8"))["baseline"]

    resumed = trainer(tmp_path, 2, [KorMedMCQAEval(source=str(sample_dir), max_samples=2)], version="b")
    resumed.fit(TinyModule(tokenizer), loader(tokenizer), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    run = tmp_path / "run" / "b"
    assert not list((run / "kormedmcqa").glob("baseline-*"))
    summary = json.loads((run / "kormedmcqa" / "summary.json").read_text(encoding="utf-8"))
    assert summary["baseline"] == stored and [e["step"] for e in summary["evaluations"]] == [2, 4]
    assert acc_by_step(run) == {0: pytest.approx(stored["acc"]), 4: pytest.approx(summary["latest"]["acc"])}

    again = trainer(tmp_path, 2, [KorMedMCQAEval(source=str(sample_dir), max_samples=2, rerun_baseline_on_resume=True)], version="c")
    again.fit(TinyModule(tokenizer), loader(tokenizer), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [p.name for p in (tmp_path / "run" / "c" / "kormedmcqa").glob("baseline-*")] == ["baseline-epoch001-step0000002.jsonl"]


def test_validate_and_test_report_accuracy(tmp_path, tokenizer, sample_dir):
    module = TinyModule(tokenizer)
    callback = KorMedMCQAEval(source=str(sample_dir), subsets=["nurse", "pharm"], max_samples=3)
    run = trainer(tmp_path, 1, [callback])
    (validated,) = run.validate(module, loader(tokenizer))
    assert set(validated) >= {"val_loss", "kormedmcqa/acc", "kormedmcqa/nurse/acc", "kormedmcqa/pharm/acc", "kormedmcqa/seconds"}
    (tested,) = run.test(module, loader(tokenizer))
    assert tested["kormedmcqa/acc"] == pytest.approx(validated["kormedmcqa/acc"])
    folder = tmp_path / "run" / "version_0" / "kormedmcqa"
    assert sorted(p.name for p in folder.glob("*.jsonl")) == ["test-epoch000-step0000000.jsonl", "validate-epoch000-step0000000.jsonl"]
    records = read_jsonl(folder / "validate-epoch000-step0000000.jsonl")
    assert validated["kormedmcqa/acc"] == pytest.approx(sum(r["correct"] for r in records) / 6)


def test_a_module_without_tokenizer_is_a_clear_error(tmp_path, sample_dir, tokenizer):
    module = TinyModule(tokenizer)
    module.tokenizer = None
    with pytest.raises(AttributeError, match="needs pl_module.model .* and pl_module.tokenizer"):
        trainer(tmp_path, 1, [KorMedMCQAEval(source=str(sample_dir))]).fit(module, loader(tokenizer))


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="scoring"):
        KorMedMCQAEval(scoring="sample")
    with pytest.raises(ValueError, match="every_n_steps"):
        KorMedMCQAEval(every_n_steps=0)
    with pytest.raises(ValueError, match="unknown subset"):
        KorMedMCQAEval(subsets=["surgeon"])


def test_every_n_steps_and_generate_scoring(tmp_path, tokenizer, sample_dir):
    callback = KorMedMCQAEval(
        source=str(sample_dir), subsets=["doctor"], scoring="generate", max_new_tokens=3, every_n_epochs=0, every_n_steps=1
    )
    trainer(tmp_path, 1, [callback]).fit(TinyModule(tokenizer), loader(tokenizer))
    run = tmp_path / "run" / "version_0"
    assert sorted(acc_by_step(run)) == [0, 1, 2]
    records = read_jsonl(run / "kormedmcqa" / "fit-epoch000-step0000002.jsonl")
    assert len(records) == 5 and all(r["logprobs"] is None and isinstance(r["generation"], str) for r in records)
    assert acc_by_step(run)[2] == pytest.approx(sum(r["pred"] == r["answer"] for r in records) / 5)

    from medkor.commands.plot import main

    assert main([str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_repeated_questions_count_once_and_are_named_in_the_summary_and_the_lines(tmp_path, tokenizer, capsys):
    from tests.eval.tiny_lm import write_jsonl, write_sample

    source = write_sample(tmp_path / "set", sizes={"doctor": 3, "nurse": 2, "pharm": 2, "dentist": 2})
    doctor = source / "doctor" / "test.jsonl"
    records = [json.loads(line) for line in doctor.read_text(encoding="utf-8").splitlines()]
    write_jsonl(doctor, records + [records[0]] * 4)  # the first question five times
    fit = trainer(tmp_path, 1, [KorMedMCQAEval(source=str(source), batch_size=4)])
    fit.fit(TinyModule(tokenizer), loader(tokenizer))
    run = tmp_path / "run" / "version_0" / "kormedmcqa"

    assert len(read_jsonl(run / "baseline-epoch000-step0000000.jsonl")) == 9  # 3 + 2 + 2 + 2: each question once
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["questions"]["doctor"] == {"count": 3, "duplicates_dropped": 4, "files": [str(doctor)]}
    assert summary["questions"]["nurse"]["count"] == 2 and summary["questions"]["nurse"]["duplicates_dropped"] == 0
    for entry in (summary["baseline"], summary["latest"]):
        assert entry["total"] == 9 and entry["duplicates_dropped"] == 4
        assert entry["subsets"]["doctor"]["total"] == 3 and entry["subsets"]["doctor"]["duplicates_dropped"] == 4
    out = capsys.readouterr().out
    named = [line for line in out.splitlines() if "repeated question(s) counted once" in line]
    assert len(named) == 1 and f"{doctor}:1 again at :4, :5, :6, :7" in named[0]  # once, not per evaluation
    lines = [line for line in out.splitlines() if line.startswith("[medkor] KorMedMCQA ")]
    assert len(lines) == 2 and all("doctor" in line and "n=3" in line for line in lines)
    assert all(line.endswith("| 4 repeated question(s) dropped (doctor 4)") for line in lines)


def test_an_empty_subset_stops_the_run_with_its_file_named(tmp_path, tokenizer):
    from medkor.eval.questions import QuestionError
    from tests.eval.tiny_lm import write_sample

    source = write_sample(tmp_path / "set", sizes={"doctor": 2, "nurse": 2, "pharm": 2, "dentist": 2})
    (source / "doctor" / "test.jsonl").write_text("", encoding="utf-8")
    fit = trainer(tmp_path, 1, [KorMedMCQAEval(source=str(source))])
    with pytest.raises(QuestionError, match=rf"^{source / 'doctor' / 'test.jsonl'}: no questions for subset 'doctor'"):
        fit.fit(TinyModule(tokenizer), loader(tokenizer))


def test_a_bad_question_file_stops_fit_before_the_model_is_configured(tmp_path, tokenizer):
    from medkor.eval.questions import QuestionError
    from tests.eval.tiny_lm import write_sample

    source = write_sample(tmp_path / "set", sizes={"doctor": 2, "nurse": 2, "pharm": 2, "dentist": 2})
    nurse = source / "nurse" / "test.jsonl"
    nurse.write_bytes(nurse.read_text(encoding="utf-8").encode("cp949"))

    class CountsConfigure(TinyModule):
        configured = 0

        def configure_model(self):
            CountsConfigure.configured += 1

    with pytest.raises(QuestionError, match=rf"^{nurse}:1: not UTF-8 text .*iconv -f CP949"):
        trainer(tmp_path, 1, [KorMedMCQAEval(source=str(source))]).fit(CountsConfigure(tokenizer), loader(tokenizer))
    assert CountsConfigure.configured == 0  # found in setup, before the (large) model would load
