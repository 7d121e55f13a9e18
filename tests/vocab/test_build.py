"""End to end on a base tokenizer and a corpus made in the tests (never seen by the project)."""

import json
import random

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from medkor.commands.extend_vocab import main
from medkor.vocab.korean import to_text


def test_loads_with_autotokenizer_base_ids_unchanged_new_ids_after(extended, base_dir):
    out, report = extended
    base = AutoTokenizer.from_pretrained(str(base_dir))
    ext = AutoTokenizer.from_pretrained(str(out))
    base_vocab, ext_vocab = base.get_vocab(), ext.get_vocab()
    assert all(ext_vocab[t] == i for t, i in base_vocab.items())
    new = {t: i for t, i in ext_vocab.items() if t not in base_vocab}
    assert len(new) == report["tokens_added"] == 120
    assert sorted(new.values()) == list(range(len(base), len(base) + 120))
    assert len(ext) == len(base) + 120
    assert ext.convert_ids_to_tokens(ext.bos_token_id) == "<bos>" and ext.eos_token_id == base.eos_token_id


def test_round_trip_of_every_corpus_text_and_of_random_text(extended, corpus_docs):
    out, report = extended
    ext = AutoTokenizer.from_pretrained(str(out))
    for doc in corpus_docs:
        assert ext.decode(ext(doc, add_special_tokens=False)["input_ids"]) == doc
    new = [t["token"] for t in report["new_tokens"]]
    rng = random.Random(0)
    alphabet = list("".join(new).replace("▁", "")) + list(" \n\t.,()-2a가😀") + ["  "]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert ext.decode(ext(text, add_special_tokens=False)["input_ids"]) == text


def test_every_added_token_is_used_where_its_text_appears(extended):
    out, report = extended
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    word_initial = [t["token"] for t in report["new_tokens"] if t["token"].startswith("▁")]
    assert len(word_initial) > 30
    for token in word_initial:
        for particle in ["", "은", "이", "에서", "으로"]:
            enc = tok.encode("환자" + to_text(token) + particle, add_special_tokens=False)
            assert any(s == 2 and e >= 2 + len(token) for s, e in enc.offsets), (token, particle, enc.tokens)
    for entry in report["new_tokens"]:
        assert tok.encode(to_text(entry["token"]), add_special_tokens=False).tokens == [entry["token"]]
    assert report["usage"]["tokens_split_in_some_context"] == []
    usage = report["usage"]
    assert usage["heldout_word_starts_kept_whole"] == usage["heldout_word_starts_with_new_token"] > 0


def test_stats_file_reports_sources_compression_and_examples(extended):
    out, report = extended
    saved = json.loads((out / "extension_stats.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert sum(saved["tokens_added_by_source"].values()) == saved["tokens_added"] == 120
    assert saved["tokens_added_by_source"]["term"] == 2  # 갑상선기능저하증, 간경변; not the unused term
    chosen = [t["source"] for t in saved["new_tokens"] if t["source"] not in ("prefix", "char")]
    assert chosen[:2] == ["term", "term"] and "term" not in chosen[2:]  # terms are preferred
    for part in ("corpus", "heldout"):
        figures = saved[part]["tokens_per_1k_chars"]
        assert figures["extended"] < figures["base"]
        assert saved[part]["round_trip_failures"]["extended"] == 0
    assert saved["heldout"]["documents"] == 120  # every 10th of 1,200
    assert saved["heldout"]["fewer_tokens_ratio"] > 1.1
    assert saved["examples"] and all(len(e["extended"]) <= len(e["base"]) for e in saved["examples"])
    speed = saved["throughput"]  # the speed figure of the issue, measured on the same text
    assert speed["characters"] > 0 and min(speed["chars_per_second"].values()) > 0
    assert speed["extended_vs_base"] == pytest.approx(
        speed["chars_per_second"]["extended"] / speed["chars_per_second"]["base"], rel=1e-3
    )


def test_command_writes_refuses_to_clobber_and_reports_bad_input(tmp_path, base_dir, corpus_file, capsys):
    out = tmp_path / "ext"
    args = ["--base", str(base_dir), "--corpus", str(corpus_file), "--num_new_tokens", "10",
            "--out", str(out), "--method", "words", "--heldout_every", "0"]
    assert main(args) == 0
    assert json.loads((out / "extension_stats.json").read_text())["tokens_added"] == 10
    assert main(args) == 2
    assert "already holds a tokenizer; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--text_field", "body"]) == 2
    assert "train.jsonl:1: missing field 'body'" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--base", str(tmp_path / "nothing")]) == 2
    assert "cannot load a tokenizer from" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--num_new_tokens", "-5"]) == 2
    assert "--num_new_tokens must be >= 0, got -5" in capsys.readouterr().err
