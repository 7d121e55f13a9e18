"""Tokenizing a split: worker processes give exactly the in-process result, in file order."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from transformers import AutoTokenizer

from medkor.data.build import split_documents
from medkor.data.cache import _encoder_factory
from medkor.data.encode import with_bos_eos, worker_count
from medkor.data.key import CacheRequest, resolve
from medkor.data.pieces import PieceStore, pieces_in_order, plan_pieces
from medkor.data.sources import DataError, ReadStats, Selection
from tests.data.conftest import korean_docs, write_jsonl

CHUNK = 700  # bytes: a few documents per piece, so small files still make many pieces


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode(selection, tokenizer, num_proc, stats=None):
    """The split's documents through the real path: plan, tokenize pieces (in an empty store), select."""
    stats = stats if stats is not None else ReadStats()
    folder = selection.files[0].parent
    request = CacheRequest("train", selection, folder, folder / f".cache-{uuid.uuid4().hex}",
                           tokenizer.name_or_path, num_proc=num_proc, piece_bytes=CHUNK)
    store = PieceStore(request.cache_dir)
    resolved = resolve(request, lambda: tokenizer)
    refs = plan_pieces(request, resolved, store)
    pieces = pieces_in_order(refs, store, _encoder_factory(request, lambda: tokenizer, resolved.inputs["tokenizer"]),
                             num_proc, CHUNK)
    batches = list(split_documents(pieces, selection, stats))
    values = np.concatenate([v for v, _, _ in batches]) if batches else np.zeros(0, np.int32)
    lengths = np.concatenate([n for _, n, _ in batches]) if batches else np.zeros(0, np.int64)
    return values, lengths


def _expected(tokenizer, texts):
    ids = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
           for t in texts]
    return np.array([i for doc in ids for i in doc], np.int32), np.array([len(doc) for doc in ids])


@pytest.fixture
def files(tmp_path):
    first = [d["text"] for d in korean_docs(40)]
    second = [d["text"] for d in korean_docs(25, start=500)]
    return (
        [write_jsonl(tmp_path / "train-0.jsonl", [{"text": t} for t in first]),
         write_jsonl(tmp_path / "train-1.jsonl", [{"text": t} for t in second])],
        first + second,
    )


@pytest.mark.parametrize("num_proc", [1, 3])
def test_tokens_equal_direct_tokenization_in_file_order(files, tokenizer, num_proc):
    paths, texts = files
    values, lengths = _encode(Selection(files=paths), tokenizer, num_proc)
    want_values, want_lengths = _expected(tokenizer, texts)
    assert np.array_equal(lengths, want_lengths) and np.array_equal(values, want_values)


@pytest.mark.parametrize(
    "options",
    [
        {"max_samples": 23},  # stops inside a chunk
        {"val_fraction": 0.3, "take_validation": True},
        {"val_fraction": 0.3, "take_validation": False, "max_samples": 30},
    ],
)
def test_workers_match_one_process(files, tokenizer, options):
    paths, _ = files
    one = _encode(Selection(files=paths, **options), tokenizer, 1)
    many = _encode(Selection(files=paths, **options), tokenizer, 2)
    assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])
    if "max_samples" in options:
        assert len(one[1]) == options["max_samples"]


def test_bad_line_in_a_late_chunk_names_file_and_line(tmp_path, tokenizer):
    lines = [f'{{"text": "{d["text"]}"}}' for d in korean_docs(60)]
    lines[47] = '{"text": 7}'
    path = write_jsonl(tmp_path / "train.jsonl", lines, raw=True)
    with pytest.raises(DataError, match=rf"{path}:48: field 'text' is int.*--data.on_bad_record skip"):
        _encode(Selection(files=[path]), tokenizer, 2)
    stats = ReadStats()
    one = _encode(Selection(files=[path], on_bad_record="skip"), tokenizer, 2, stats)
    assert len(one[1]) == 59 and stats.skipped == 1 and stats.skipped_examples == [
        f"{path}:48: field 'text' is int, not a string"
    ]


def test_lines_after_max_samples_are_not_read(tmp_path, tokenizer):
    lines = [f'{{"text": "{d["text"]}"}}' for d in korean_docs(30)] + ["{broken"]
    path = write_jsonl(tmp_path / "train.jsonl", lines, raw=True)
    assert len(_encode(Selection(files=[path], max_samples=30), tokenizer, 2)[1]) == 30
    with pytest.raises(DataError, match=r"train.jsonl:31: malformed JSON"):
        _encode(Selection(files=[path], max_samples=31), tokenizer, 2)


def test_file_without_usable_records_is_named(tmp_path, tokenizer):
    good = write_jsonl(tmp_path / "train-0.jsonl", korean_docs(5))
    blank = tmp_path / "train-1.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(DataError, match=rf"{blank}: no usable records"):
        _encode(Selection(files=[good, blank]), tokenizer, 1)
    with pytest.raises(DataError, match=rf"{tmp_path / 'absent.jsonl'}: file not found"):
        _encode(Selection(files=[good, tmp_path / "absent.jsonl"]), tokenizer, 1)


def test_worker_count():
    assert worker_count(4, total_bytes=10 * CHUNK, chunk_bytes=CHUNK) == 4
    assert worker_count(4, total_bytes=2 * CHUNK, chunk_bytes=CHUNK) == 2  # never more workers than chunks
    assert worker_count(None, total_bytes=1, chunk_bytes=CHUNK) == 1  # one chunk: tokenized in-process
    assert worker_count(1, total_bytes=100 * CHUNK, chunk_bytes=CHUNK) == 1


def test_with_bos_eos_frames_every_document(tokenizer):
    encodings = tokenizer.backend_tokenizer.encode_batch_fast(["고혈압", "당뇨병 환자"], add_special_tokens=False)
    values, lengths = with_bos_eos(encodings, 2, 1)
    assert values.dtype == np.int32 and list(lengths) == [len(encodings[0]) + 2, len(encodings[1]) + 2]
    assert list(values) == [2, *encodings[0].ids, 1, 2, *encodings[1].ids, 1]
    empty_values, empty_lengths = with_bos_eos([], 2, 1)
    assert len(empty_values) == 0 and len(empty_lengths) == 0


def test_a_dying_worker_is_an_error_not_a_hang(files, tokenizer, monkeypatch):
    import os

    from medkor.data import encode

    real = encode.parse_chunk

    def dies_on_a_late_chunk(chunk, text_field):
        if chunk.path.name == "train-1.jsonl":
            os._exit(9)  # as if killed; runs in a forked worker, never in this process
        return real(chunk, text_field)

    monkeypatch.setattr(encode, "parse_chunk", dies_on_a_late_chunk)
    paths, _ = files
    with pytest.raises(RuntimeError, match=r"tokenizer worker \d died \(exit code 9\)"):
        _encode(Selection(files=paths), tokenizer, 2)


def test_a_failing_worker_reports_its_traceback(files, tokenizer, monkeypatch):
    from medkor.data import encode

    def broken(chunk, text_field):
        raise ArithmeticError("tokenizer exploded")

    monkeypatch.setattr(encode, "parse_chunk", broken)
    paths, _ = files
    with pytest.raises(RuntimeError, match=r"(?s)tokenizer worker \d failed:.*ArithmeticError: tokenizer exploded"):
        _encode(Selection(files=paths), tokenizer, 2)
