"""extend-vocab's --out: never a file it did not write removed, never an unverified tokenizer published, kills
leave the earlier folder whole; required terms that do not fit raise the term frequency instead of failing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medkor.commands.extend_vocab import main
from medkor.run.publish import KILL_ENV
from medkor.vocab import build
from medkor.vocab.build import MARKER, STATS_FILE, ExtendConfig, extend_vocab

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def args(base_dir, corpus_file):
    def make(out, tokens=10):
        return ["--base", str(base_dir), "--corpus", str(corpus_file), "--num_new_tokens", str(tokens),
                "--out", str(out), "--heldout_every", "0"]
    return make


def _user_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "data").mkdir()
    (folder / "data" / "train.jsonl").write_text('{"text": "내 데이터"}\n')


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_a_folder_with_other_files_is_refused_and_with_overwrite_they_are_kept(tmp_path, args, capsys):
    out = tmp_path / "work"
    _user_files(out)
    assert main(args(out)) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: folder is not empty (data, notes.txt); choose a new folder, or pass --overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["data", "notes.txt"]
    assert main(args(out) + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "train.jsonl").is_file()
    assert (out / "tokenizer.json").is_file() and (out / STATS_FILE).is_file()
    written = set(json.loads((out / MARKER).read_text())["files"])
    assert {"tokenizer.json", "tokenizer_config.json", STATS_FILE} <= written and not written & {"notes.txt", "data"}
    assert _siblings(out) == []


def test_the_working_folder_and_its_parents_are_refused_and_nothing_in_them_is_touched(tmp_path, args, monkeypatch,
                                                                                       capsys):
    here = tmp_path / "project" / "sub"
    _user_files(here)
    monkeypatch.chdir(here)
    for out in (".", "..", str(here), "./"):
        for extra in ([], ["--overwrite"]):
            assert main(args(out) + extra) == 2
            err = capsys.readouterr().err
            resolved = (here / out).resolve()
            what = "the working folder" if resolved == here else f"a folder above the working folder {here}"
            assert f"--out {Path(out)} is {resolved}, {what}; give a new folder" in err, err
    assert sorted(p.name for p in here.iterdir()) == ["data", "notes.txt"]
    assert sorted(p.name for p in here.parent.iterdir()) == ["sub"]


def test_a_symbolic_link_as_out_is_refused_in_one_line(tmp_path, args, capsys):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "tok"
    link.symlink_to(real)
    for extra in ([], ["--overwrite"]):
        assert main(args(link) + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {link} is a symbolic link (to {real})" in err
    assert link.is_symlink() and list(real.iterdir()) == []


def test_overwrite_replaces_only_an_earlier_runs_files(tmp_path, args):
    out = tmp_path / "ext"
    assert main(args(out)) == 0
    (out / "notes.txt").write_text("mine")
    inode = (out / "notes.txt").stat().st_ino
    assert main(args(out, tokens=30) + ["--overwrite"]) == 0
    assert json.loads((out / STATS_FILE).read_text())["tokens_added"] == 30
    assert (out / "notes.txt").read_text() == "mine" and (out / "notes.txt").stat().st_ino == inode
    assert _siblings(out) == []


def test_overwrite_never_replaces_a_tokenizer_that_extend_vocab_did_not_write(tmp_path, args, base_dir, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "tokenizer.json").write_bytes((base_dir / "tokenizer.json").read_bytes())
    (out / "config.json").write_text("{}")
    assert main(args(out) + ["--overwrite"]) == 2
    assert f"--out {out} holds tokenizer.json, which medkor extend-vocab did not write" in capsys.readouterr().err
    assert (out / "tokenizer.json").read_bytes() == (base_dir / "tokenizer.json").read_bytes()


def test_a_tokenizer_that_fails_verification_is_never_published(tmp_path, base_dir, corpus_file, monkeypatch):
    out = tmp_path / "ext"
    cfg = ExtendConfig(base=str(base_dir), corpus=[str(corpus_file)], out=str(out), num_new_tokens=10,
                       heldout_every=0)
    extend_vocab(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fails(*a, **k):
        raise RuntimeError("reloaded tokenizer changed ids")

    monkeypatch.setattr(build, "_verify_saved", fails)
    cfg.overwrite, cfg.num_new_tokens = True, 20
    with pytest.raises(RuntimeError, match="changed ids"):
        extend_vocab(cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _siblings(out) == []


def test_a_kill_before_verification_leaves_the_earlier_tokenizer_whole_and_the_next_run_sweeps(tmp_path, args,
                                                                                               corpus_docs):
    """The kill points of the swap itself are tested on `publish_folder` (tests/run/test_publish.py)."""
    out = tmp_path / "ext"
    assert main(args(out)) == 0
    (out / "notes.txt").write_text("mine")
    small = tmp_path / "small.txt"  # the killed run needs only to reach the point, not to learn much
    small.write_text("\n".join(corpus_docs[:200]) + "\n", encoding="utf-8")
    killed = args(out, tokens=30) + ["--overwrite", "--corpus", str(small)]
    env = {**os.environ, KILL_ENV: "extend-vocab:saved", "TOKENIZERS_PARALLELISM": "false"}
    code = "import sys; from medkor.commands.extend_vocab import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, *killed], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert json.loads((out / STATS_FILE).read_text())["tokens_added"] == 10  # the earlier folder, whole
    assert (out / "notes.txt").read_text() == "mine"
    assert set(json.loads((out / MARKER).read_text())["files"]) | {"notes.txt", MARKER} == {p.name for p in out.iterdir()}
    assert len(_siblings(out)) == 1  # the killed run's staging folder
    assert main(args(out, tokens=20) + ["--overwrite"]) == 0
    assert _siblings(out) == [] and json.loads((out / STATS_FILE).read_text())["tokens_added"] == 20


def test_required_terms_that_do_not_fit_raise_the_term_frequency_and_say_so(tmp_path, args, capsys):
    terms = tmp_path / "terms.txt"
    terms.write_text("갑상선기능저하증\n골다공증\n콜레스테롤\n합병증\n간경변증후군\n패혈증쇼크\n", encoding="utf-8")
    out = tmp_path / "ext"
    common = args(out, tokens=8) + ["--terms", str(terms), "--term_min_frequency", "1"]
    assert main(common + ["--strict_terms"]) == 2
    assert "terms seen at least 1 times do not fit into --num_new_tokens 8" in capsys.readouterr().err
    assert not out.exists()
    assert main(common) == 0
    printed = capsys.readouterr().out
    stats = json.loads((out / STATS_FILE).read_text())["terms"]
    assert stats["required_from_asked"] == 1 and stats["required_from_raised"]
    assert stats["required_from"] > 1 and stats["required"] < stats["required_at_asked_frequency"] == 4
    assert stats["required_single_token"] == stats["required"]
    assert (f"note: the 4 terms seen at least 1 times do not fit into --num_new_tokens 8: made whole only the "
            f"{stats['required']} seen at least {stats['required_from']} times") in printed


@pytest.mark.parametrize("raised_by", ["python", "tokenizers"])
def test_a_full_disk_is_one_line_naming_out_and_the_free_space_and_the_earlier_folder_stays(tmp_path, args, capsys,
                                                                                          monkeypatch, raised_by):
    import errno

    out = tmp_path / "ext"
    assert main(args(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(hf_base, model, folder):
        (folder / "tokenizer.json").write_text("{")
        if raised_by == "tokenizers":  # what its Rust writer raises on ENOSPC
            raise Exception("No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "tokenizer.json"))

    monkeypatch.setattr(build, "_save", full)
    capsys.readouterr()
    assert main(args(out, tokens=20) + ["--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"medkor extend-vocab: error: --out {out}: no space left on the device while writing the tokenizer beside it (")
    assert " free on the file system of " in err and f"{out} is unchanged" in err and "[Errno" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _siblings(out) == []


def test_overwrite_never_takes_a_stats_file_without_the_marker_as_an_earlier_run(tmp_path, args, capsys):
    out = tmp_path / "o4"
    out.mkdir()
    (out / STATS_FILE).write_text("mine\n")
    (out / "tokenizer_config.json").write_text('{"mine":1}\n')
    for extra in ([], ["--overwrite"]):
        assert main(args(out) + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"--out {out} holds {STATS_FILE}, tokenizer_config.json, which medkor extend-vocab did not write" in err
        assert "choose a new folder, or remove them" in err
    assert (out / STATS_FILE).read_text() == "mine\n" and (out / "tokenizer_config.json").read_text() == '{"mine":1}\n'
