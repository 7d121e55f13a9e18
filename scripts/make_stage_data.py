#!/usr/bin/env python
"""Write the stage 01 and 02 demo samples: a Korean medical dictionary and exam training questions.

Original text from the fact tables in ``scripts/demo_data`` (see ``stages.py``);
deterministic, no network. The exam sample is checked against the bundled
evaluation sample with medkor's leak check: no question may be held or overlap.

Outputs (under ``medkor/assets/demo``)::

    dictionary/train.jsonl, dictionary/validation.jsonl   {"term", "category", "definition"}
    exam/train.jsonl, exam/validation.jsonl               KorMedMCQA schema, `cot` filled

Usage: python scripts/make_stage_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from demo_data import all_facts  # noqa: E402
from demo_data.stages import dictionary, exam_questions  # noqa: E402

SEED = 20240918
N_DICT_VALIDATION = 24
N_EXAM_VALIDATION = 16


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "medkor" / "assets" / "demo")
    args = parser.parse_args(argv)
    facts = all_facts()
    entries = dictionary(facts)
    random.Random(SEED).shuffle(entries)
    write_jsonl(args.out / "dictionary" / "validation.jsonl", entries[:N_DICT_VALIDATION])
    write_jsonl(args.out / "dictionary" / "train.jsonl", entries[N_DICT_VALIDATION:])
    exam = exam_questions(facts, SEED)
    write_jsonl(args.out / "exam" / "validation.jsonl", exam[:N_EXAM_VALIDATION])
    write_jsonl(args.out / "exam" / "train.jsonl", exam[N_EXAM_VALIDATION:])

    from medkor.data.formats import FormatSpec
    from medkor.data.leak import LeakCheck, scan, QuestionIndex

    for split in ("test", "fewshot"):
        check = LeakCheck(str(args.out / "kormedmcqa"), split=split)
        index = QuestionIndex(check.questions(), check.ngram)
        for name in ("train", "validation"):
            report = scan([args.out / "exam" / f"{name}.jsonl"], FormatSpec(format="mcq"), index, check.threshold)
            if report.hits:
                print("\n".join(report.lines()), file=sys.stderr)
                raise SystemExit(f"exam/{name}.jsonl shares questions with kormedmcqa {split}")
    print(f"dictionary: {len(entries) - N_DICT_VALIDATION} train / {N_DICT_VALIDATION} validation entries")
    print(f"exam: {len(exam) - N_EXAM_VALIDATION} train / {N_EXAM_VALIDATION} validation questions, "
          "none held by or overlapping the evaluation sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
