"""`medkor prepare` and `medkor cache ls|verify|rm`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medkor.commands import cache as cache_cmd
from medkor.commands import prepare as prepare_cmd
from tests.data.conftest import segments_of

DEMO = Path(__file__).resolve().parents[2] / "medkor" / "assets" / "demo" / "tiny-gemma3"


def _config(tmp_path, data_dir, tokenizer_dir) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"model_name_or_path": str(DEMO), "tokenizer_path": str(tokenizer_dir)},
        "data": {"data_dir": str(data_dir), "max_length": 32, "num_proc": 1},
    }))
    return path


def test_prepare_prints_one_json_line_per_split(tmp_path, data_dir, tokenizer_dir, capsys):
    config = _config(tmp_path, data_dir, tokenizer_dir)
    assert prepare_cmd.main(["--config", str(config)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["split"], r["status"]) for r in lines] == [("train", "built"), ("validation", "built")]
    assert set(lines[0]) == {"split", "status", "path", "key", "rows", "tokens", "fill_rate", "seconds"}
    assert 0.9 < lines[0]["fill_rate"] <= 1.0  # packed text: every row full but the last
    assert prepare_cmd.main(["--config", str(config), "--data.max_length", "32"]) == 0
    assert [json.loads(x)["status"] for x in capsys.readouterr().out.splitlines()] == ["hit", "hit"]
    (data_dir / "train.jsonl").write_text('{"text": "좋음"}\n{"text": 1}\n')
    assert prepare_cmd.main(["--config", str(config)]) == 1
    assert "train.jsonl:2:" in capsys.readouterr().err


def test_cache_ls_verify_rm(tmp_path, data_dir, tokenizer_dir, capsys):
    config = _config(tmp_path, data_dir, tokenizer_dir)
    prepare_cmd.main(["--config", str(config)])
    cache_dir = data_dir / ".cache"
    capsys.readouterr()
    assert cache_cmd.main(["ls", str(cache_dir), "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {e["split"] for e in entries} == {"train", "validation"}
    assert all(e["state"] == "ok" and e["rows"] > 0 and e["params"]["max_length"] == 32 for e in entries)
    assert cache_cmd.main(["verify", str(cache_dir)]) == 0
    train = next(Path(e["path"]) for e in entries if e["split"] == "train")
    rows = segments_of(train)[0]
    data = bytearray(rows.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the full verify sees it
    rows.write_bytes(bytes(data))
    assert cache_cmd.main(["ls", str(cache_dir)]) == 0  # no hashing, but the segment's stat moved
    assert f"{train.name}  " in (out := capsys.readouterr().out) and "changed: 1 row segment(s)" in out
    assert cache_cmd.main(["verify", str(cache_dir)]) == 1
    out = capsys.readouterr().out
    assert "content hash" in out and "medkor prepare --config ..." in out
    (cache_dir / ".tmp-train-0123-host-1-ab").mkdir()  # leftover of a killed build
    validation = next(Path(e["path"]) for e in entries if e["split"] == "validation")
    assert cache_cmd.main(["rm", str(cache_dir), "train"]) == 0
    assert "row segment(s) no other cache uses" in capsys.readouterr().out
    names = sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and p.name not in (".pieces", ".segments"))
    assert len(names) == 1 and names[0].startswith("validation-")
    # the train rows went with their cache; the validation rows stay whole
    assert sorted(p.name for p in (cache_dir / ".segments").glob("*.arrow")) == sorted(
        p.name for p in segments_of(validation))
    assert cache_cmd.main(["verify", str(cache_dir)]) == 0


def _published(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if cache_dir.is_dir() else []


def test_bad_input_in_any_split_publishes_nothing(tmp_path, data_dir, tokenizer_dir, capsys):
    # train is fine, validation is bad: the train cache must not be published either
    (data_dir / "validation.jsonl").write_text('{"text": "좋음"}\n{"text": "깨진\n')
    config = _config(tmp_path, data_dir, tokenizer_dir)
    assert prepare_cmd.main(["--config", str(config)]) == 1
    assert "validation.jsonl:2:" in capsys.readouterr().err
    assert _published(data_dir / ".cache") == []
    assert not any(p.name.startswith(".tmp-") for p in (data_dir / ".cache").iterdir())
    # the other way round: a bad train file, a good validation file
    (data_dir / "validation.jsonl").write_text('{"text": "좋음"}\n')
    (data_dir / "train.jsonl").write_text('{"text": "좋음"}\n{"body": "x"}\n')
    assert prepare_cmd.main(["--config", str(config)]) == 1
    assert "train.jsonl:2:" in capsys.readouterr().err
    assert _published(data_dir / ".cache") == []


def test_cache_commands_never_touch_foreign_folders(tmp_path, data_dir, tokenizer_dir, capsys):
    # a cache_dir shared with other tools (e.g. ~/.cache): their folders are not caches
    cache_dir = data_dir / ".cache"
    prepare_cmd.main(["--config", str(_config(tmp_path, data_dir, tokenizer_dir))])
    (cache_dir / "huggingface" / "hub").mkdir(parents=True)
    (cache_dir / "huggingface" / "hub" / "weights.bin").write_bytes(b"x")
    capsys.readouterr()
    assert cache_cmd.main(["ls", str(cache_dir), "--json"]) == 0
    assert "huggingface" not in capsys.readouterr().out
    assert cache_cmd.main(["verify", str(cache_dir)]) == 0
    assert cache_cmd.main(["rm", str(cache_dir), "train"]) == 0
    assert (cache_dir / "huggingface" / "hub" / "weights.bin").is_file()
    assert [n.split("-")[0] for n in _published(cache_dir)] == ["huggingface", "validation"]
    assert cache_cmd.main(["rm", str(cache_dir), "--all"]) == 0
    assert _published(cache_dir) == ["huggingface"]
    # a name that matches nothing is reported, a missing directory is an error
    assert cache_cmd.main(["rm", str(cache_dir), "nosuchcache"]) == 1
    assert "matches 'nosuchcache'" in capsys.readouterr().err
    assert cache_cmd.main(["verify", str(tmp_path / "missing")]) == 2


def test_cache_ls_marks_stale_caches_rm_removes_them_with_their_locks(tmp_path, data_dir, tokenizer_dir, capsys):
    config = _config(tmp_path, data_dir, tokenizer_dir)
    prepare_cmd.main(["--config", str(config)])
    cache_dir = data_dir / ".cache"
    capsys.readouterr()

    def states() -> dict[str, str]:
        assert cache_cmd.main(["ls", str(cache_dir), "--json"]) == 0
        return {e["split"]: e["state"] for e in map(json.loads, capsys.readouterr().out.splitlines()) if "split" in e}

    def locks() -> list[str]:
        return sorted(p.name.split("-")[0] for p in cache_dir.glob("*.lock*"))

    assert states() == {"train": "ok", "validation": "ok"}
    assert locks() == ["train", "validation"]
    with (data_dir / "train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "한 줄 더"}, ensure_ascii=False) + "\n")
    assert states() == {"train": "stale: train.jsonl changed", "validation": "ok"}
    assert cache_cmd.main(["gc", str(cache_dir), "--dry-run"]) == 0
    assert f"medkor cache rm --stale {cache_dir}" in capsys.readouterr().out  # the pieces stay while caches do
    assert cache_cmd.main(["rm", str(cache_dir), "--stale", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and set(states()) == {"train", "validation"}
    assert cache_cmd.main(["rm", str(cache_dir), "--stale"]) == 0
    assert "removed" in capsys.readouterr().out and set(states()) == {"validation"}
    assert locks() == ["validation"]  # the removed cache's lock went with it
    (data_dir / "validation.jsonl").unlink()
    assert states() == {"validation": "stale: validation.jsonl missing"}
    assert cache_cmd.main(["rm", str(cache_dir), "validation"]) == 0
    capsys.readouterr()
    assert states() == {} and locks() == []


def test_cache_rm_leaves_a_cache_a_running_process_reads(tmp_path, data_dir, tokenizer_dir, capsys):
    import signal
    import subprocess
    import sys

    config = _config(tmp_path, data_dir, tokenizer_dir)
    prepare_cmd.main(["--config", str(config)])
    cache_dir = data_dir / ".cache"
    train = next(p for p in cache_dir.iterdir() if p.is_dir() and p.name.startswith("train-"))
    # a training process: opens the cache (setup) and keeps reading it
    code = ("import sys, time; from pathlib import Path; "
            "from medkor.data.readers import mark_reader; folder = Path(sys.argv[1]); mark_reader(folder); "
            "print('reading', flush=True); time.sleep(60)")
    reader = subprocess.Popen([sys.executable, "-c", code, str(train)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert reader.stdout.readline().strip() == "reading"
        capsys.readouterr()
        assert cache_cmd.main(["rm", str(cache_dir), "train", "--dry-run"]) == 0
        assert f"would skip {train}: in use by pid {reader.pid}" in capsys.readouterr().out
        assert cache_cmd.main(["rm", str(cache_dir), "train"]) == 1
        err = capsys.readouterr().err
        assert f"skipped {train}: in use by pid {reader.pid} on host" in err and "left as it is" in err
        assert cache_cmd.main(["ls", str(cache_dir)]) == 0
        assert f"ok; in use by pid {reader.pid}" in capsys.readouterr().out
        assert train.is_dir() and all(path.is_file() for path in segments_of(train))
        assert cache_cmd.main(["gc", str(cache_dir)]) == 0 and all(path.is_file() for path in segments_of(train))
    finally:
        reader.send_signal(signal.SIGKILL)  # killed: its mark stays behind, and is seen to be stale
        reader.wait()
    assert list((cache_dir / ".readers").iterdir())
    assert cache_cmd.main(["rm", str(cache_dir), "train"]) == 0 and not train.exists()
    assert not list((cache_dir / ".readers").iterdir())


def test_prepare_a_validate_stage_needs_no_training_data(tmp_path, data_dir, tokenizer_dir, capsys):
    (data_dir / "train.jsonl").unlink()  # a folder that holds only validation data
    config = _config(tmp_path, data_dir, tokenizer_dir)
    assert prepare_cmd.main(["--config", str(config)]) == 1
    assert "no training data" in capsys.readouterr().err
    assert prepare_cmd.main(["--config", str(config), "--stage", "validate"]) == 0
    assert [json.loads(line)["split"] for line in capsys.readouterr().out.splitlines()] == ["validation"]
    assert prepare_cmd.main(["--stage=validate", "--config", str(config)]) == 0  # now a hit
    assert json.loads(capsys.readouterr().out)["status"] == "hit"
    assert prepare_cmd.main(["--config", str(config), "--stage", "tune"]) == 2
    assert "--stage 'tune': choose one of fit, validate, test" in capsys.readouterr().err


def test_a_rebuild_of_plain_text_never_loads_transformers(tmp_path, data_dir, tokenizer_dir):
    import subprocess
    import sys

    import time

    config = _config(tmp_path, data_dir, tokenizer_dir)
    time.sleep(2.1)  # the tokenizer's hash is remembered only for files older than 2 s
    assert prepare_cmd.main(["--config", str(config)]) == 0
    (data_dir / "train.jsonl").rename(data_dir / "train-renamed.jsonl")  # a new key, nothing to tokenize
    code = ("import sys; from medkor.commands import prepare; code = prepare.main(sys.argv[1:]); "
            "assert 'transformers' not in sys.modules, 'transformers imported'; sys.exit(code)")
    def prepare() -> str:
        proc = subprocess.run([sys.executable, "-c", code, "--config", str(config)], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[2], timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.splitlines()[0])["status"] == "built"
        return proc.stderr

    assert "pieces: 0 tokenized" in prepare()
    # plain text tokenized again (an edited line): the backend stored by the first build, still no transformers
    path = data_dir / "train-renamed.jsonl"
    path.write_text(path.read_text(encoding="utf-8").replace("고혈압", "고혈압증", 1), encoding="utf-8")
    assert "pieces: 1 tokenized" in prepare()
