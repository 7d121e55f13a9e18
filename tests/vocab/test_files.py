"""A damaged tokenizer file (cut short, not UTF-8) is one line naming the file, in training and in the data cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medkor.vocab.files import TokenizerFileError, damaged_tokenizer_file, load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DEMO_TOKENIZER = ROOT / "medkor" / "assets" / "demo" / "tokenizer-extended"


@pytest.fixture
def cut_short(tmp_path) -> Path:
    folder = tmp_path / "cut"
    shutil.copytree(DEMO_TOKENIZER, folder)
    data = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").write_bytes(data[:5000])  # an interrupted copy
    return folder


@pytest.fixture
def not_utf8(tmp_path) -> Path:
    folder = tmp_path / "latin"
    shutil.copytree(DEMO_TOKENIZER, folder)
    data = (folder / "tokenizer.json").read_bytes()
    at = data.index(b'"vocab"') + 20
    (folder / "tokenizer.json").write_bytes(data[:at] + b"\xff\xfe" + data[at + 2:])
    return folder


def test_the_damaged_file_is_named_with_where_and_why(cut_short, not_utf8):
    assert damaged_tokenizer_file(DEMO_TOKENIZER) is None
    problem = damaged_tokenizer_file(cut_short)
    assert problem.startswith(f"{cut_short / 'tokenizer.json'}: not valid JSON (")
    assert "line 1 column" in problem and "ends after 5000 bytes: cut short?" in problem
    problem = damaged_tokenizer_file(not_utf8)
    assert problem.startswith(f"{not_utf8 / 'tokenizer.json'}: not UTF-8 text (byte 0xff at offset ")


def test_loading_raises_one_line_with_what_to_do_and_other_failures_stay_as_they_were(cut_short, not_utf8, tmp_path):
    assert len(load_tokenizer(DEMO_TOKENIZER)) > 1000
    for folder in (cut_short, not_utf8):
        with pytest.raises(TokenizerFileError) as info:
            load_tokenizer(folder)
        text = str(info.value)
        assert str(folder / "tokenizer.json") in text and "\n" not in text
        assert "copy the tokenizer files again" in text and "medkor extend-vocab" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception) as info:
        load_tokenizer(tmp_path / "empty")
    assert not isinstance(info.value, TokenizerFileError)


def test_training_loads_the_tokenizer_through_the_same_check(cut_short):
    from medkor.cli import user_errors
    from medkor.model.loading import load_tokenizer as load_for_training

    with pytest.raises(TokenizerFileError, match="tokenizer.json: not valid JSON"):
        load_for_training(str(cut_short))
    assert TokenizerFileError in user_errors()  # `medkor fit` prints it as one line


def test_the_cache_key_names_the_damaged_file_whatever_loads_the_tokenizer(not_utf8, tmp_path):
    from transformers import AutoTokenizer

    from medkor.data.fingerprint import FingerprintMemo, tokenizer_fingerprint

    memo = FingerprintMemo(tmp_path)
    with pytest.raises(TokenizerFileError, match=r"latin/tokenizer.json: not UTF-8 text"):
        tokenizer_fingerprint(str(not_utf8), memo, lambda: AutoTokenizer.from_pretrained(str(not_utf8)))


def test_prepare_says_which_file_in_one_line(cut_short, capsys):
    from medkor.commands.prepare import main

    assert main(["--config", str(ROOT / "configs" / "demo.yaml"), "--model.tokenizer_path", str(cut_short)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"medkor prepare: error: tokenizer {cut_short}: {cut_short / 'tokenizer.json'}: "
                              "not valid JSON")
