"""KorMedMCQA evaluation speed: batched ``logprob`` scoring vs the replaced generate-per-question method.

The replaced method: for each question, a one-shot chat prompt, one greedy ``generate`` of up to
300 new tokens at batch size 1, then the first letter A-E in the reply. Both run side by side in
one process on the same model, tokenizer and questions; the ratio of wall times is printed.

    python benchmarks/bench_kormedmcqa.py                      # demo tiny Gemma 3, demo questions, CPU
    python benchmarks/bench_kormedmcqa.py --device cuda --repeat 20
"""

from __future__ import annotations

import argparse
import platform
import re
import time
from pathlib import Path

import torch

from medkor.eval.kormedmcqa import EvalSettings, KorMedMCQAEvaluator
from medkor.eval.prompts import question_text

DEMO = Path(__file__).resolve().parents[1] / "medkor" / "assets" / "demo"


def replaced_method(model, tokenizer, questions, shot, max_new_tokens: int) -> tuple[float, float, int]:
    """Seconds, accuracy and generated tokens of one batch-1 greedy generate per question."""
    device = next(model.parameters()).device
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    correct = tokens = 0
    start = time.perf_counter()
    for q in questions:
        messages = [
            {"role": "user", "content": question_text(shot)},
            {"role": "assistant", "content": shot.answer},
            {"role": "user", "content": question_text(q)},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
            )
        reply = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        tokens += out.shape[1] - ids.shape[1]
        found = re.search(r"[ABCDE]", reply)
        correct += bool(found and found.group(0) == q.answer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, correct / len(questions), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO / "tiny-gemma3"))
    parser.add_argument("--source", default=str(DEMO / "kormedmcqa"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--max-samples", type=int, default=3, help="questions per subset (both methods)")
    parser.add_argument("--repeat", type=int, default=5, help="logprob passes to time (best is kept)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    evaluator = KorMedMCQAEvaluator(EvalSettings(source=args.source, batch_size=args.batch_size, max_samples=args.max_samples))
    questions = [q for items in evaluator.questions.values() for q in items]
    start = time.perf_counter()
    evaluator.encoded(tokenizer)  # tokenizing all prompts: once per run, reported apart
    encode_s = time.perf_counter() - start
    evaluator.evaluate(model, tokenizer)  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        records = evaluator.evaluate(model, tokenizer)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    logprob_s = min(times)
    logprob_acc = sum(r["correct"] for r in records) / len(records)

    shot = load_shot(args.source)
    old_s, old_acc, tokens = replaced_method(model, tokenizer, questions, shot, args.max_new_tokens)

    n = len(questions)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()):,} parameters, fp32) on {args.device}: {device}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {n} questions")
    print(f"prompt tokenization (once):          {encode_s:8.3f} s")
    print(f"logprob, batch {args.batch_size:<3d} (best of {args.repeat}):  {logprob_s:8.3f} s  {1000 * logprob_s / n:8.2f} ms/question  acc {logprob_acc:.3f}")
    print(f"replaced: generate <= {args.max_new_tokens}, batch 1:    {old_s:8.3f} s  {1000 * old_s / n:8.2f} ms/question  acc {old_acc:.3f}  ({tokens / n:.0f} new tokens/question)")
    print(f"speed-up: {old_s / logprob_s:.0f}x")


def load_shot(source: str):
    from medkor.eval.questions import load_questions

    return load_questions(source, subsets=["doctor"], split="fewshot")["doctor"][0]


if __name__ == "__main__":
    main()
