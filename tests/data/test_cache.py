"""The cache: hit/miss matrix, no work on a hit, every token kept, crash leftovers, disk check."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from medkor.data.cache import CacheError, CacheRequest, check_manifest, ensure_cache, open_cache, resolve
from medkor.data.fingerprint import FingerprintMemo, tokenizer_fingerprint
from medkor.data.rows import RowsFileError
from medkor.data.sources import Selection, split_files
from tests.data.conftest import korean_docs, segments_of, write_jsonl


def _request(data_dir: Path, tokenizer_dir: Path, **kw) -> CacheRequest:
    sel = {k: kw.pop(k) for k in ("max_samples", "val_fraction", "take_validation", "on_bad_record") if k in kw}
    split = kw.pop("split", "train")
    return CacheRequest(
        split=split,
        selection=Selection(files=split_files(data_dir, "train"), **sel),
        data_dir=data_dir,
        cache_dir=data_dir / ".cache",
        tokenizer_path=str(tokenizer_dir),
        max_length=kw.pop("max_length", 32),
        num_proc=1,
        **kw,
    )


def _split_caches(cache_dir: Path) -> list[Path]:
    from medkor.data.inventory import is_cache_folder

    return [p for p in cache_dir.iterdir() if p.is_dir() and is_cache_folder(p)]


def test_hit_miss_matrix(data_dir, tokenizer_dir, other_tokenizer_dir):
    first = ensure_cache(_request(data_dir, tokenizer_dir))
    assert first.status == "built" and first.rows > 0
    assert ensure_cache(_request(data_dir, tokenizer_dir)).status == "hit"
    keys = {first.key}

    def expect_built(**kw):
        result = ensure_cache(_request(data_dir, kw.pop("tok", tokenizer_dir), **kw))
        assert result.status == "built", kw
        assert result.key not in keys
        keys.add(result.key)
        assert ensure_cache(_request(data_dir, tokenizer_dir if "tok" not in kw else kw["tok"], **kw)).status == "hit"

    expect_built(tok=other_tokenizer_dir)
    expect_built(max_length=48)
    expect_built(max_samples=10)
    expect_built(packing=False)
    train = data_dir / "train.jsonl"
    with open(train, "a", encoding="utf-8") as handle:  # appended line
        handle.write(json.dumps({"text": "새 문서가 추가되었다."}, ensure_ascii=False) + "\n")
    expect_built()
    lines = train.read_text(encoding="utf-8").splitlines()
    lines[5] = lines[5].replace("증례", "환자")  # edited line, same length
    size = train.stat().st_size
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert train.stat().st_size == size
    expect_built()


def test_tokenizer_key_is_content_not_path(tokenizer_dir, tmp_path):
    copy = shutil.copytree(tokenizer_dir, tmp_path / "elsewhere")
    from transformers import AutoTokenizer

    a = tokenizer_fingerprint(str(tokenizer_dir), FingerprintMemo(None), lambda: AutoTokenizer.from_pretrained(tokenizer_dir))
    b = tokenizer_fingerprint(str(copy), FingerprintMemo(None), lambda: AutoTokenizer.from_pretrained(copy))
    assert a == b


def test_hit_parses_no_jsonl_and_runs_no_tokenizer(data_dir, tokenizer_dir, monkeypatch):
    ensure_cache(_request(data_dir, tokenizer_dir))
    # the files were written a moment ago; in real use they are older than the window
    # in which a hash is not trusted to be remembered
    monkeypatch.setattr("medkor.data.fingerprint._RACY_NS", 0)
    ensure_cache(_request(data_dir, tokenizer_dir))  # remembers the content hashes

    def forbidden(*args, **kwargs):
        raise AssertionError("work done on a cache hit")

    import transformers

    monkeypatch.setattr("medkor.data.encode.parse_chunk", forbidden)
    monkeypatch.setattr("medkor.data.cache.build_split", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)
    monkeypatch.setattr("medkor.data.fingerprint.hash_bytes_of", forbidden)
    monkeypatch.setattr("medkor.data.cache.hash_bytes_of", forbidden)  # the rows' check is remembered too
    monkeypatch.setattr("medkor.data.pieces.PieceStore.read", forbidden)
    assert ensure_cache(_request(data_dir, tokenizer_dir)).status == "hit"
    rows, manifest = open_cache(_request(data_dir, tokenizer_dir))
    assert len(rows) == manifest["rows"]


def test_every_token_accounted_for(data_dir, tokenizer_dir):
    from transformers import AutoTokenizer

    result = ensure_cache(_request(data_dir, tokenizer_dir, max_length=40))
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [json.loads(line)["text"] for line in (data_dir / "train.jsonl").read_text().splitlines()]
    expected = np.concatenate(
        [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    )
    rows, manifest = open_cache(_request(data_dir, tokenizer_dir, max_length=40))
    got = np.concatenate([rows[i][0] for i in range(len(rows))])
    assert np.array_equal(got, expected)
    assert manifest["tokens"] == result.tokens == len(expected)
    assert manifest["documents"] == len(texts)
    # every document's <bos> is a start; the one other start is where the piece's leftover (after its last
    # full row) begins the tail row mid-document
    starts = [(i, int(s)) for i in range(len(rows)) for s in rows[i][1]]
    at_bos = [(i, s) for i, s in starts if rows[i][0][s] == tok.bos_token_id]
    assert len(at_bos) == len(texts) == int((got == tok.bos_token_id).sum())
    assert len(starts) - len(at_bos) <= 1 and all(s == 0 for i, s in set(starts) - set(at_bos))
    assert all(len(rows[i][0]) == 40 for i in range(len(rows) - 1))


def test_val_fraction_split_is_deterministic_and_disjoint(data_dir, tokenizer_dir):
    (data_dir / "validation.jsonl").unlink()
    train = ensure_cache(_request(data_dir, tokenizer_dir, val_fraction=0.3))
    val = ensure_cache(_request(data_dir, tokenizer_dir, val_fraction=0.3, take_validation=True, split="validation"))
    assert train.manifest["documents"] + val.manifest["documents"] == 60
    assert 5 <= val.manifest["documents"] <= 35
    assert ensure_cache(_request(data_dir, tokenizer_dir, val_fraction=0.3)).status == "hit"


def test_leftover_temp_folder_is_never_a_cache_and_gets_swept(data_dir, tokenizer_dir):
    built = ensure_cache(_request(data_dir, tokenizer_dir))
    # what a build killed after writing its manifest but before the rename leaves behind
    leftover = built.path.with_name(f".tmp-{built.path.name}-host-1-abcd")
    shutil.copytree(built.path, leftover)
    shutil.rmtree(built.path)
    again = ensure_cache(_request(data_dir, tokenizer_dir))
    assert again.status == "built" and not leftover.exists()
    assert check_manifest(again.path, again.key) is None


def test_damaged_cache_is_rebuilt(data_dir, tokenizer_dir):
    built = ensure_cache(_request(data_dir, tokenizer_dir))
    with open(segments_of(built.path)[-1], "ab") as handle:
        handle.write(b"junk")
    with pytest.raises(RowsFileError, match=r"\.arrow: .*changed or damaged after it was written.*medkor cache verify"):
        open_cache(_request(data_dir, tokenizer_dir))
    assert ensure_cache(_request(data_dir, tokenizer_dir)).status == "built"
    assert ensure_cache(_request(data_dir, tokenizer_dir, overwrite=True)).status == "built"
    assert not [p for p in (data_dir / ".cache").iterdir() if p.name.startswith(".trash")]


def test_missing_cache_in_setup_says_why(data_dir, tokenizer_dir):
    ensure_cache(_request(data_dir, tokenizer_dir))
    with pytest.raises(CacheError, match=r"max_length 32 -> 64.*medkor prepare"):
        open_cache(_request(data_dir, tokenizer_dir, max_length=64))


def test_disk_space_checked_before_build(data_dir, tokenizer_dir, monkeypatch):
    import medkor.data.cache as cache

    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 1000))
    with pytest.raises(CacheError, match=r"needs about [0-9.]+ (B|KiB|MiB|GiB) free, only 1000 B is"):
        ensure_cache(_request(data_dir, tokenizer_dir))
    assert not [p for p in (data_dir / ".cache").iterdir() if p.is_dir()]  # not even a piece


def test_bad_record_publishes_nothing_and_skip_counts(data_dir, tokenizer_dir):
    write_jsonl(data_dir / "train.jsonl", korean_docs(5))
    with open(data_dir / "train.jsonl", "a") as handle:
        handle.write('{"text": 3}\n{broken\n')
    with pytest.raises(ValueError, match=r"train.jsonl:6: field 'text' is int"):
        ensure_cache(_request(data_dir, tokenizer_dir))
    assert _split_caches(data_dir / ".cache") == []  # pieces tokenized on the way are kept for the next try
    result = ensure_cache(_request(data_dir, tokenizer_dir, on_bad_record="skip"))
    assert result.manifest["skipped"] == 2 and result.manifest["documents"] == 5


def test_fresh_file_hash_is_not_remembered_old_one_is(tmp_path):
    from medkor.data.fingerprint import file_fingerprints

    path = write_jsonl(tmp_path / "train.jsonl", korean_docs(3))
    memo = FingerprintMemo(tmp_path)
    file_fingerprints([path], tmp_path, memo)
    assert memo.entries == {}  # changed within the racy window: a same-tick edit could hide
    old = time.time_ns() - 10**10
    memo.put("x", [[0, 0, 1, old, old]], "h", time.time_ns())
    assert memo.get("x", [[0, 0, 1, old, old]]) == "h"
    assert memo.get("x", [[0, 0, 1, old, old + 1]]) is None  # any write moves ctime


def test_resolve_is_stable(data_dir, tokenizer_dir):
    a = resolve(_request(data_dir, tokenizer_dir)).key
    b = resolve(_request(data_dir, tokenizer_dir)).key
    assert a == b


def test_hit_sweeps_leftovers_of_a_killed_build(data_dir, tokenizer_dir):
    first = ensure_cache(_request(data_dir, tokenizer_dir))
    leftover = first.path.parent / f".tmp-{first.path.name}-host-1-deadbeef"
    leftover.mkdir()
    (leftover / "rows.arrow").write_bytes(b"half a build")
    again = ensure_cache(_request(data_dir, tokenizer_dir))
    assert again.status == "hit" and not leftover.exists()


def test_warm_load_does_not_import_pandas(data_dir, tokenizer_dir):
    # pyarrow's to_numpy imports pandas (~0.4 s): that alone would break the 0.5 s warm start
    import subprocess
    import sys

    result = ensure_cache(_request(data_dir, tokenizer_dir))
    code = (
        "import sys; from medkor.data.rows import RowsFile; r = RowsFile(sys.argv[1]); "
        "ids, starts, _ = r[len(r) - 1]; assert len(ids) > 0 and starts.dtype.name == 'int32'; "
        "assert 'pandas' not in sys.modules, 'pandas imported'"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code, str(segments_of(result.path)[-1])], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_truncation_or_padding_in_tokenizer_json_never_cuts_documents(data_dir, tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    state = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    state["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    state["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"}
    clipped = tmp_path / "clipped"
    shutil.copytree(tokenizer_dir, clipped)
    (clipped / "tokenizer.json").write_text(json.dumps(state))
    result = ensure_cache(_request(data_dir, clipped))
    texts = [json.loads(line)["text"] for line in (data_dir / "train.jsonl").read_text().splitlines()]
    assert result.tokens == sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 2 for t in texts)


def test_memo_saves_merge_with_other_processes(tmp_path):
    # ranks save their own remembered hashes; a later save must not drop another's
    first, second = FingerprintMemo(tmp_path), FingerprintMemo(tmp_path)
    first.remember("segment:a", [[1, 2, 3, 4, 5]], "ha")
    second.remember("segment:b", [[1, 2, 3, 4, 6]], "hb")
    first.save()
    second.save()
    merged = FingerprintMemo(tmp_path)
    assert merged.get("segment:a", [[1, 2, 3, 4, 5]]) == "ha" and merged.get("segment:b", [[1, 2, 3, 4, 6]]) == "hb"


def test_a_miss_names_the_newest_of_equally_close_caches(data_dir, tokenizer_dir, caplog):
    import logging

    path = data_dir / "train.jsonl"
    names = []
    for version in range(3):
        write_jsonl(path, korean_docs(20, start=100 * version))
        if version < 2:
            names.append(ensure_cache(_request(data_dir, tokenizer_dir)).path.name)
            time.sleep(1.1)  # manifests record the second they were made
    caplog.clear()  # the builds above may have been logged too
    with caplog.at_level(logging.INFO, logger="medkor.data"):
        ensure_cache(_request(data_dir, tokenizer_dir))
    (reason,) = [r.getMessage() for r in caplog.records if "cache miss" in r.getMessage()]
    assert f"closest cache {names[1]} differs in: train.jsonl content changed" in reason  # not the older one


def test_opening_a_cache_marks_this_process_as_its_reader(data_dir, tokenizer_dir):
    import os

    from medkor.data.readers import live_readers

    built = ensure_cache(_request(data_dir, tokenizer_dir))
    assert live_readers(built.path) == []  # building or finding it is not reading it
    open_cache(_request(data_dir, tokenizer_dir))
    (reader,) = live_readers(built.path)
    assert reader["pid"] == os.getpid() and reader["command"].startswith("medkor")
