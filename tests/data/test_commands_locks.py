"""`medkor cache` and the build lock: named validation sets are caches too, and a running build is never removed."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from medkor.commands import cache as cache_cmd
from medkor.commands import prepare as prepare_cmd
from medkor.data import MedKorDataModule
from medkor.data.cache import CacheError, resolve
from medkor.data.inventory import is_cache_folder, key_name
from medkor.data.lock import BuildLock, LockTimeout

DEMO = Path(__file__).resolve().parents[2] / "medkor" / "assets" / "demo" / "tiny-gemma3"
KEY = "0123456789abcdef0123"


def test_key_name_of_leftovers_with_dashes_in_split_and_host(tmp_path):
    (tmp_path / f"val-plain_text-{KEY}.lock").touch()
    (tmp_path / f"val-plain-{KEY[:-1]}9.lock").touch()  # another set whose name is a prefix of this one
    for name in [f".tmp-val-plain_text-{KEY}-gpu-node-01-4242-abcdef12", f".trash-val-plain_text-{KEY}-rm",
                 f"val-plain_text-{KEY}"]:
        assert is_cache_folder(tmp_path / name), name
        assert key_name(tmp_path / name) == f"val-plain_text-{KEY}", name
    # no lock present (nobody built here yet): read up to the key
    assert key_name(tmp_path / f".tmp-val-a-b-{KEY}-host-1-ab") == f"val-a-b-{KEY}"
    assert not is_cache_folder(tmp_path / "val-plain_text-notakey")


def test_rm_spares_a_named_set_whose_build_holds_the_lock(tmp_path, data_dir, tokenizer_dir, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"model_name_or_path": str(DEMO), "tokenizer_path": str(tokenizer_dir)},
        "data": {"data_dir": str(data_dir), "max_length": 32, "num_proc": 1,
                 "val_sets": {"plain_text": str(data_dir / "validation.jsonl")}},
    }))
    assert prepare_cmd.main(["--config", str(config)]) == 0
    cache_dir = data_dir / ".cache"
    capsys.readouterr()
    assert cache_cmd.main(["ls", str(cache_dir), "--json"]) == 0
    entries = {e["split"]: e for e in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(entries) == {"train", "validation", "val-plain_text"} and entries["val-plain_text"]["state"] == "ok"
    name = Path(entries["val-plain_text"]["path"]).name
    # a rebuild of that set is running (overwrite): its builder holds the key's lock and owns a temporary folder
    builder = BuildLock(cache_dir / f"{name}.lock", what=name)
    builder.acquire(timeout=0)
    building = cache_dir / f".tmp-{name}-gpu-node-01-4242-abcdef12"
    building.mkdir()
    (building / "rows.arrow").write_bytes(b"half")
    try:
        assert cache_cmd.main(["rm", str(cache_dir), "--all"]) == 1
        err = capsys.readouterr().err
        assert f"skipped {building}: a build of this key is running" in err
        assert building.is_dir() and (cache_dir / name).is_dir()
        assert not any(p.name.startswith(("train-", "validation-")) for p in cache_dir.iterdir() if p.is_dir())
    finally:
        builder.release()
    assert cache_cmd.main(["rm", str(cache_dir), "--all"]) == 0
    assert not building.exists() and not (cache_dir / name).exists()


def test_a_build_waiting_for_another_builder_is_bounded_and_names_it(data_dir, tokenizer_dir):
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32, num_proc=1,
                          lock_timeout=0.5)
    train = dm.cache_requests()[0]
    name = resolve(train).folder.name
    other = BuildLock(train.cache_dir / f"{name}.lock", what=name)  # another process building the same key
    other.acquire(timeout=0)
    try:
        with pytest.raises((LockTimeout, CacheError)) as raised:
            dm.prepare_data()
    finally:
        other.release()
    message = str(raised.value)
    assert f"host {socket.gethostname()} pid {os.getpid()} since" in message and f"{name}.lock.owner" in message
    assert "data.lock_timeout" in message
    dm.prepare_data()  # the lock is free again: builds
