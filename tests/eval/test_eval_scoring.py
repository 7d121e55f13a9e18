import pytest
import torch

from medkor.eval.encoding import encode_questions
from medkor.eval.kormedmcqa import EvalSettings, KorMedMCQAEvaluator
from medkor.eval.predictions import logprob_records
from medkor.eval.questions import load_questions
from medkor.eval.scoring import length_sorted_batches, score_logprob


@pytest.fixture(scope="module")
def encoded(tokenizer, sample_dir):
    questions = [q for items in load_questions(sample_dir).values() for q in items]
    return encode_questions(questions, tokenizer, "harness")


def independent_logprobs(model, item):
    """What a reviewer would do: one question, full logits, no padding, no logits_to_keep."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([item.prompt_ids])).logits[0, -1]
    return logits.float().log_softmax(-1)[list(item.letter_ids)].tolist()


def test_batched_scores_equal_one_question_at_a_time(model, encoded):
    lengths = {len(e.prompt_ids) for e in encoded}
    assert len(lengths) > 3  # the sample really pads
    batched = score_logprob(model, encoded, batch_size=8)
    window = score_logprob(model, encoded, batch_size=5, per_row=False)
    for item, row, row_window in zip(encoded, batched, window):
        reference = independent_logprobs(model, item)
        assert row == pytest.approx(reference, abs=1e-4)
        assert row_window == pytest.approx(reference, abs=1e-4)
    # the letters really differ, so argmax is meaningful
    assert max(max(r) - min(r) for r in batched) > 0.1


def test_pred_is_argmax_and_records_hold_what_the_model_saw(model, encoded):
    records = logprob_records(encoded, score_logprob(model, encoded, batch_size=4))
    for item, record in zip(encoded, records):
        assert record["pred"] == max(record["logprobs"], key=record["logprobs"].get)
        assert record["correct"] == (record["pred"] == item.question.answer)
        assert record["prompt_ids"] == list(item.prompt_ids) and record["prompt"] == item.prompt
        assert list(record["letter_ids"].values()) == list(item.letter_ids)


def test_length_sorted_batches():
    batches = length_sorted_batches([3, 9, 1, 9, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]
    with pytest.raises(ValueError):
        length_sorted_batches([1], 0)


def test_evaluator_restores_train_mode_keeps_no_grad_and_works_with_checkpointing(tokenizer, sample_dir):
    from tests.eval.tiny_lm import build_model

    model = build_model(tokenizer)
    model.config.use_cache = False
    model.gradient_checkpointing_enable()
    model.train()
    evaluator = KorMedMCQAEvaluator(EvalSettings(source=str(sample_dir), max_samples=3, batch_size=4))
    records = evaluator.evaluate(model, tokenizer)
    assert model.training and len(records) == 12
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    items = evaluator.encoded(tokenizer)
    expected = dict(zip(((e.question.subset, e.question.index) for e in items), score_logprob(model, items, 1)))
    for record in records:
        assert list(record["logprobs"].values()) == pytest.approx(expected[record["subset"], record["index"]], abs=1e-4)


def test_peft_wrapped_model_scores_like_its_base(model, tokenizer, encoded):
    peft = pytest.importorskip("peft")
    import copy

    wrapped = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapped.eval()
    # LoRA's B starts at zero: the wrapped model must give the base model's scores
    assert score_logprob(wrapped, encoded[:6], batch_size=3) == [
        pytest.approx(r, abs=1e-5) for r in score_logprob(model, encoded[:6], batch_size=3)
    ]
