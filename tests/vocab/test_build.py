"""End to end on a base tokenizer and a corpus made in the tests (never seen by the project)."""

import json
import random
import shutil

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from medkor.commands.extend_vocab import main
from medkor.vocab.build import ExtendConfig, extend_vocab
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


def test_every_added_token_is_reachable_and_no_document_gets_longer(extended, base_dir, corpus_docs):
    out, report = extended
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    base = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    for entry in report["new_tokens"]:
        assert tok.encode(to_text(entry["token"]), add_special_tokens=False).tokens == [entry["token"]]
        assert entry["saved_on_corpus"] > 0
    usage = report["usage"]
    assert usage["tokens_not_formed_alone"] == [] and usage["tokens_checked"] == 120
    assert 60 <= usage["tokens_used_on_corpus"] <= 120  # the rest are steps of longer tokens
    longer = [d for d in corpus_docs
              if len(tok.encode(d, add_special_tokens=False).ids) > len(base.encode(d, add_special_tokens=False).ids)]
    assert longer == []


def test_stats_file_reports_sources_compression_terms_and_examples(extended):
    out, report = extended
    saved = json.loads((out / "extension_stats.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(report))
    assert sum(saved["tokens_added_by_source"].values()) == saved["tokens_added"] == 120
    assert set(saved["tokens_added_by_source"]) <= {"merge", "char", "term", "term_part"}
    terms = saved["terms"]  # 갑상선기능저하증 and 간경변 are frequent: the corpus merges make them anyway
    assert terms["terms"] == 3 and terms["seen_in_corpus"] == 2 and terms["required"] == 2
    assert terms["required_single_token"] == 2 and terms["required_not_single_token"] == []
    assert terms["heldout_word_starts_kept_whole"] == terms["heldout_word_starts_with_term"] > 0
    for part in ("corpus", "heldout"):
        figures = saved[part]["tokens_per_1k_chars"]
        assert figures["extended"] < figures["base"]
        failures = saved[part]["round_trip_failures"]
        assert failures["base"] == failures["extended"] == failures["added_by_extension"] == 0
    assert saved["heldout"]["documents"] == 120  # every 10th of 1,200
    assert saved["heldout"]["fewer_tokens_ratio"] > 1.5
    assert saved["examples"] and all(len(e["extended"]) <= len(e["base"]) for e in saved["examples"])
    speed = saved["throughput"]  # the speed figure of the issue, measured on the same text
    assert speed["characters"] > 0 and min(speed["chars_per_second"].values()) > 0
    assert speed["extended_vs_base"] == pytest.approx(
        speed["chars_per_second"]["extended"] / speed["chars_per_second"]["base"], rel=1e-3
    )


def test_rare_terms_cost_nothing_unless_required_or_given_priority(tmp_path, base_dir, corpus_file):
    terms = tmp_path / "terms.txt"
    terms.write_text("고혈압성심질환\n", encoding="utf-8")  # never in the corpus
    common = dict(base=str(base_dir), corpus=[str(corpus_file)], terms=[str(terms)], num_new_tokens=40,
                  heldout_every=0)
    off = extend_vocab(ExtendConfig(out=str(tmp_path / "a"), **common))
    assert off["terms"]["single_token"] == 0 and off["terms"]["tokens_spent"] == 0
    on = extend_vocab(ExtendConfig(out=str(tmp_path / "b"), term_min_frequency=0, **common))
    assert on["terms"]["required_single_token"] == 1 and on["terms"]["tokens_spent"] >= 1
    assert on["tokens_added"] == 40 and on["corpus"]["fewer_tokens_ratio"] < off["corpus"]["fewer_tokens_ratio"]


def test_command_writes_refuses_to_clobber_and_reports_bad_input(tmp_path, base_dir, corpus_file, capsys):
    out = tmp_path / "ext"
    args = ["--base", str(base_dir), "--corpus", str(corpus_file), "--num_new_tokens", "10",
            "--out", str(out), "--heldout_every", "0"]
    assert main(args) == 0
    assert json.loads((out / "extension_stats.json").read_text())["tokens_added"] == 10
    assert main(args + ["--overwrite", "--num_new_tokens", "100000"]) == 0
    added = json.loads((out / "extension_stats.json").read_text())["tokens_added"]
    assert 100 < added < 100000
    assert f"note: added {added} of the 100000 tokens asked for: no pair" in capsys.readouterr().out
    assert main(args) == 2
    assert "already holds a tokenizer of an earlier extend-vocab run; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--text_field", "body"]) == 2
    assert "train.jsonl:1: missing field 'body'" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--base", str(tmp_path / "nothing")]) == 2
    assert "cannot load a tokenizer from" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--num_new_tokens", "-5"]) == 2
    assert "--num_new_tokens must be >= 0, got -5" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--terms", str(base_dir / "tokenizer.json"), "--term_min_frequency", "0",
                        "--num_new_tokens", "1", "--strict_terms"]) == 2
    assert "do not fit into --num_new_tokens 1" in capsys.readouterr().err


def test_a_base_that_loses_text_is_told_apart_from_the_extension(tmp_path, base_dir, corpus_docs, capsys):
    lossy = tmp_path / "lossy"
    shutil.copytree(base_dir, lossy)
    spec = json.loads((lossy / "tokenizer.json").read_text(encoding="utf-8"))
    spec["model"]["byte_fallback"] = False  # characters outside the vocabulary become <unk>
    (lossy / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = json.loads((lossy / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # GemmaTokenizer would turn byte fallback back on
    (lossy / "tokenizer_config.json").write_text(json.dumps(config))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_docs[:300] + ["환자는 😀 좋아졌다."] * 3) + "\n", encoding="utf-8")
    out = tmp_path / "ext"
    assert main(["--base", str(lossy), "--corpus", str(corpus), "--num_new_tokens", "20", "--out", str(out),
                 "--heldout_every", "0"]) == 0
    printed = capsys.readouterr().out
    failures = json.loads((out / "extension_stats.json").read_text())["corpus"]["round_trip_failures"]
    lost = failures["base"]
    assert lost >= 3 and failures["extended"] == lost and failures["added_by_extension"] == 0
    assert f"the base tokenizer itself loses text in {lost} of 303 corpus documents" in printed
    assert "the extension adds 0 such documents" in printed
    example = failures["base_example"]
    assert "<unk>" in example["decoded"] and example["text"] != example["decoded"]
