"""Incremental builds: after any change to the files, the rows equal a fresh build, row for row,
and only the pieces that hold changed lines are tokenized again."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medkor.data.cache import CacheRequest, ensure_cache, ensure_caches, open_cache
from medkor.data.formats import FormatSpec
from medkor.data.inventory import verify_cache
from medkor.data.pieces import PieceStore
from medkor.data.rows import RowsFileError
from medkor.data.sources import Selection, split_files
from tests.data.conftest import korean_docs, segments_of, write_jsonl

PIECE = 900  # bytes: a few documents per piece, so every file has several
ROOT = Path(__file__).resolve().parents[2]


def _docs(count: int, start: int = 0, dictionary: bool = False) -> list[dict]:
    docs = korean_docs(count, start)
    if dictionary:
        return [{"term": f"용어{start + i}", "definition": d["text"]} for i, d in enumerate(docs)]
    return docs


def _corpus(folder: Path, dictionary: bool = False) -> Path:
    write_jsonl(folder / "train-a.jsonl", _docs(70, 0, dictionary))
    write_jsonl(folder / "train-b.jsonl", _docs(50, 200, dictionary))
    write_jsonl(folder / "train-c.jsonl", _docs(40, 400, dictionary))
    return folder


def _requests(data_dir: Path, cache_dir: Path, tokenizer_dir: Path, **options) -> list[CacheRequest]:
    fraction = options.pop("val_fraction", 0.0)
    spec = FormatSpec(format="dictionary") if options.pop("dictionary", False) else None
    sel = dict(files=split_files(data_dir, "train"), spec=spec, max_samples=options.pop("max_samples", None), seed=7)
    splits = {"train": Selection(val_fraction=fraction, **sel)}
    if fraction:
        splits["validation"] = Selection(val_fraction=fraction, take_validation=True, **sel)
    return [CacheRequest(split, selection, data_dir, cache_dir, str(tokenizer_dir), num_proc=1, piece_bytes=PIECE,
                         max_length=options.get("max_length", 48), packing=options.get("packing", True))
            for split, selection in splits.items()]


def _rows(request: CacheRequest) -> list[tuple[list[int], list[int], list[int]]]:
    rows, _ = open_cache(request)
    return [tuple(part.tolist() for part in rows[i]) for i in range(len(rows))]


def _edit_line(path: Path, number: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    record = json.loads(lines[number])
    field = "text" if "text" in record else "definition"
    record[field] = record[field].replace("환자", "환자분", 1) + " 수정됨"
    lines[number] = json.dumps(record, ensure_ascii=False) + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


CHANGES = {
    "file added": lambda d, dic: write_jsonl(d / "train-d.jsonl", _docs(5, 900, dic)),
    "file removed": lambda d, dic: (d / "train-b.jsonl").unlink(),
    "file renamed": lambda d, dic: (d / "train-c.jsonl").rename(d / "train-e.jsonl"),  # same place in the order
    "files reordered": lambda d, dic: (d / "train-a.jsonl").rename(d / "train-z.jsonl"),  # first file goes last
    "line edited": lambda d, dic: _edit_line(d / "train-b.jsonl", 25),
    "lines appended": lambda d, dic: _append(d / "train-a.jsonl", _docs(6, 700, dic)),
}
OPTIONS = {
    "text": {},
    "text unpacked": {"packing": False},
    "val_fraction": {"val_fraction": 0.3},
    "max_samples": {"max_samples": 100},
    "dictionary": {"dictionary": True, "max_length": 96},
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_incremental_equals_fresh_row_for_row(tmp_path, tokenizer_dir, change, option):
    options = OPTIONS[option]
    dictionary = bool(options.get("dictionary"))
    data = _corpus(tmp_path / "data", dictionary)
    cache = tmp_path / "cache"
    before = ensure_caches(_requests(data, cache, tokenizer_dir, **options))
    assert all(r.status == "built" for r in before)
    pieces_before = set(PieceStore(cache).keys())
    CHANGES[change](data, dictionary)
    after = ensure_caches(_requests(data, cache, tokenizer_dir, **options))
    fresh_requests = _requests(data, tmp_path / "fresh", tokenizer_dir, **options)
    fresh = ensure_caches(fresh_requests)
    for incremental, scratch, request in zip(after, fresh, fresh_requests):
        assert incremental.status == "built" and incremental.key == scratch.key
        for field in ("rows", "tokens", "documents", "learned_tokens", "skipped"):
            assert incremental.manifest[field] == scratch.manifest[field], field
        incremental_request = _requests(data, cache, tokenizer_dir, **options)[[r.split for r in fresh_requests]
                                                                                 .index(request.split)]
        assert _rows(incremental_request) == _rows(request)
        assert verify_cache(incremental.path) == []  # every segment whole; packed rows full but the last
    tokenized = sum(r.manifest["pieces"]["tokenized"] for r in after)
    new_pieces = set(PieceStore(cache).keys()) - pieces_before
    if option in ("text", "text unpacked", "val_fraction"):
        # rows are written again only for new pieces (each split packs its own), plus each packed split's tail
        for result in after:
            written = result.manifest["segments_built"]["written"]
            assert written <= len(new_pieces) + (option != "text unpacked"), (result.split, written)
            assert result.manifest["segments_built"]["reused"] >= len(result.manifest["segments"]) - written
    assert tokenized == len(new_pieces)
    if option == "max_samples":
        pass  # the first build tokenized only the pieces its first 100 documents needed
    elif change in ("file removed", "file renamed", "files reordered"):
        assert tokenized == 0  # nothing to tokenize: the rows are assembled from stored pieces
    elif change == "line edited":
        assert 1 <= len(new_pieces) <= 2
    elif change == "file added":
        assert new_pieces and after[0].manifest["pieces"]["reused"] == before[0].manifest["pieces"]["used"]
    else:  # appended: only the file's last piece changes; the new lines make new pieces
        assert new_pieces and after[0].manifest["pieces"]["reused"] >= before[0].manifest["pieces"]["used"] - 1
    assert sum(r.manifest["pieces"]["used"] for r in fresh) > 3 * len(fresh)  # several pieces per file


def test_piece_cuts_are_content_defined(tmp_path):
    from medkor.data.pieces import cut_file

    path = write_jsonl(tmp_path / "big.jsonl", _docs(400))
    cuts, _ = cut_file(path, PIECE)
    assert len(cuts) > 20 and all(0 < length for _, length, _, _ in cuts)
    old = {bytes_hash for *_, bytes_hash in cuts}
    _edit_line(path, 200)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(["{\"text\": \"앞에 더한 줄\"}\n"] + lines), encoding="utf-8")  # a line before all others
    changed = [c for c in cut_file(path, PIECE)[0] if c[3] not in old]
    assert 2 <= len(changed) <= 4  # the first piece and the one or two around the edited line
    rebuilt = b"".join(path.read_bytes()[o : o + n] for o, n, _, _ in cut_file(path, PIECE)[0])
    assert rebuilt == path.read_bytes()


@pytest.fixture
def warnings_seen():
    import logging

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("medkor.data")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_flipped_ids_in_rows_are_found_before_use(tmp_path, tokenizer_dir, warnings_seen):
    data = _corpus(tmp_path / "data")
    request = _requests(data, tmp_path / "cache", tokenizer_dir)[0]
    built = ensure_cache(request)
    want = _rows(request)
    rows_path = max(segments_of(built.path), key=lambda path: path.stat().st_size)
    raw = bytearray(rows_path.read_bytes())
    size = len(raw)
    ids = np.frombuffer(raw, dtype=np.int32, count=size // 8, offset=size // 4)  # inside the ids buffer
    flipped = ids.copy()
    flipped[:2000] ^= 1
    raw[size // 4 : size // 4 + flipped.nbytes] = flipped.tobytes()
    rows_path.write_bytes(bytes(raw))
    assert rows_path.stat().st_size == size
    with pytest.raises(RowsFileError, match=rf"{rows_path.name}: .*was changed or damaged after it was written.*"
                                            rf"medkor cache verify .* {built.path.name}.*medkor prepare"):
        open_cache(request)
    again = ensure_cache(request)  # prepare: the damaged segment is written again from its piece, with a warning
    assert again.status == "built" and again.manifest["pieces"]["tokenized"] == 0
    assert again.manifest["segments_built"]["written"] == 1  # only the damaged one
    assert any("replacing damaged cache" in line and rows_path.name in line for line in warnings_seen)
    assert _rows(request) == want


def test_damaged_piece_is_tokenized_again(tmp_path, tokenizer_dir, warnings_seen):
    data = _corpus(tmp_path / "data")
    cache = tmp_path / "cache"
    request = _requests(data, cache, tokenizer_dir)[0]
    ensure_cache(request)
    want = _rows(request)
    store = PieceStore(cache)
    victim = store.path(store.keys()[3])
    raw = bytearray(victim.read_bytes())
    raw[-10] ^= 0xFF
    victim.write_bytes(bytes(raw))
    shutil.rmtree(next(p for p in cache.iterdir() if p.name.startswith("train-")))
    shutil.rmtree(cache / ".segments")  # the rows must be packed again, so the pieces are read
    rebuilt = ensure_cache(request)
    assert rebuilt.status == "built"
    assert any(line.startswith(f"{victim}: damaged piece") for line in warnings_seen)
    pieces = rebuilt.manifest["pieces"]
    assert pieces["tokenized"] == 1 and pieces["reused"] == pieces["used"] - 1  # the repair is counted
    assert _rows(request) == want
    store.read(victim.name[: -len(".piece")])  # whole again


def test_max_samples_tokenizes_only_what_it_takes(tmp_path, tokenizer_dir):
    data = _corpus(tmp_path / "data")
    result = ensure_caches(_requests(data, tmp_path / "cache", tokenizer_dir, max_samples=20))[0]
    tokenized = len(PieceStore(tmp_path / "cache").keys())
    everything = ensure_caches(_requests(data, tmp_path / "all", tokenizer_dir))[0]
    assert result.manifest["documents"] == 20 and everything.manifest["documents"] == 160
    assert tokenized == result.manifest["pieces"]["tokenized"] < everything.manifest["pieces"]["tokenized"] / 4


WORKER = Path(__file__).with_name("build_worker.py")


def test_sigkill_during_an_incremental_build_keeps_the_previous_cache(tmp_path, tokenizer_dir):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", korean_docs(3000))

    def request(folder: Path) -> CacheRequest:
        return CacheRequest("train", Selection(files=[folder / "train.jsonl"]), folder, folder / ".cache",
                            str(tokenizer_dir), max_length=64, num_proc=1, piece_bytes=16384)

    previous = ensure_cache(request(data)).path
    store = PieceStore(data / ".cache")
    _append(data / "train.jsonl", _docs(4000, 5000))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, str(WORKER), str(data), str(tokenizer_dir), "64", "1", "16384"]
    killed_inside = 0
    for _ in range(2):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + 60
        while proc.poll() is None and time.time() < end and not any(
                ".partial-" in p.name for p in (data / ".cache").iterdir()):
            time.sleep(0.01)
        killed_inside += proc.poll() is None
        time.sleep(random.uniform(0.0, 0.5))  # planning, tokenizing pieces, packing or publishing
        proc.kill()
        proc.wait()
        assert verify_cache(previous) == []  # the previous cache is whole
        for key in store.keys():
            store.read(key)  # and so is every piece that has its name
    assert killed_inside >= 1
    done = ensure_cache(request(data))
    fresh = tmp_path / "fresh"
    shutil.copytree(data, fresh, ignore=shutil.ignore_patterns(".cache"))
    scratch = ensure_cache(request(fresh))
    assert done.key == scratch.key and done.manifest["tokens"] == scratch.manifest["tokens"]
    assert _rows(request(data)) == _rows(request(fresh))


def test_cache_ls_shows_pieces_and_gc_removes_only_unused_ones(tmp_path, tokenizer_dir, capsys):
    from medkor.commands import cache as cache_cmd
    from medkor.data.inventory import list_pieces, remove_cache
    from medkor.data.pieces import Claim

    data = _corpus(tmp_path / "data")
    cache = tmp_path / "cache"
    old = ensure_cache(_requests(data, cache, tokenizer_dir)[0])
    _edit_line(data / "train-b.jsonl", 10)
    request = _requests(data, cache, tokenizer_dir)[0]
    new = ensure_cache(request)
    want = _rows(request)
    pieces = {p["piece"]: p for p in list_pieces(cache)}
    only_old = [k for k, p in pieces.items() if p["used_by"] == [old.path.name]]
    assert 1 <= len(only_old) <= 2 and all(new.path.name in p["used_by"] for k, p in pieces.items() if k not in only_old)
    capsys.readouterr()
    assert cache_cmd.main(["ls", str(cache), "--pieces"]) == 0
    out = capsys.readouterr().out
    assert f"pieces: {len(pieces)} in {cache / '.pieces'}" in out and f"{only_old[0]}  " in out
    assert ", ".join(sorted([old.path.name, new.path.name])) in out  # a piece both caches use
    assert remove_cache(old.path)
    store = PieceStore(cache)
    assert len(store.plans()) == 4  # the cuts of train-a, both versions of train-b, train-c
    with Claim(store, "a-running-build", only_old[:1]):  # a live build holds one of them: gc keeps it
        assert cache_cmd.main(["gc", str(cache), "--dry-run"]) == 0
        dry = capsys.readouterr().out
        assert set(store.keys()) == set(pieces)  # nothing removed by a dry run
        assert cache_cmd.main(["gc", str(cache)]) == 0
        out = capsys.readouterr().out
    def pieces_in(text: str, verb: str) -> int:
        return sum(line.startswith(verb) and "/.pieces/" in line for line in text.splitlines())

    assert pieces_in(dry, "would remove") == pieces_in(out, "removed ") == len(only_old) - 1
    # the old cache's own row segments (its changed piece's and its tail) went too; the new cache's stay
    in_use = {p.stem for p in segments_of(new.path)}
    assert sum("/.segments/" in line for line in out.splitlines()) >= 2
    assert {p.stem for p in (cache / ".segments").glob("*.arrow")} == in_use
    assert set(store.keys()) == set(pieces) - set(only_old[1:])
    from medkor.run.atomic import host_tag

    dead_writer = store.root / f".tmp-{only_old[0]}-{host_tag()}-999999999-abcd1234"  # killed while writing
    dead_writer.write_bytes(b"half a piece")
    assert cache_cmd.main(["gc", str(cache)]) == 0
    assert set(store.keys()) == set(pieces) - set(only_old)  # the claim ended: now it is unused too
    assert not dead_writer.exists() and len(store.plans()) == 3  # no cache was built from the old train-b
    assert _rows(request) == want  # the cache in use lost nothing
    shutil.rmtree(new.path)
    rebuilt = ensure_cache(request)
    assert rebuilt.manifest["pieces"]["tokenized"] == 0 and _rows(request) == want


def test_stored_draws_carve_the_same_validation_split_as_the_records():
    from medkor.data.sources import validation_draw

    texts = [d["text"] for d in korean_docs(500)]
    for take in (False, True):
        selection = Selection(files=[], val_fraction=0.3, take_validation=take, seed=11)
        draws = np.array([validation_draw(t, 11) for t in texts], dtype=np.uint64)
        assert selection.keep_mask(draws, len(texts)).tolist() == [selection.keeps(t) for t in texts]


def test_written_segments_are_remembered_while_a_build_runs(tmp_path, tokenizer_dir, monkeypatch):
    # a build killed after some segments were written: its rerun trusts them instead of packing them again
    from medkor.data.fingerprint import FingerprintMemo
    from medkor.data.segments import SegmentStore

    monkeypatch.setattr(SegmentStore, "save_every", 0.0)
    data = _corpus(tmp_path / "data")
    request = _requests(data, tmp_path / "cache", tokenizer_dir)[0]
    saved: list[int] = []
    real_save = FingerprintMemo.save

    def save(self) -> None:
        real_save(self)
        on_disk = FingerprintMemo(tmp_path / "cache").entries
        saved.append(sum(name.startswith("segment:") for name in on_disk))

    monkeypatch.setattr(FingerprintMemo, "save", save)
    built = ensure_cache(request)
    assert len(saved) > 3 and saved[0] >= 1 and saved[:-1] == sorted(saved[:-1])  # saved as they were written
    assert saved[-1] == len(built.manifest["segments"])
