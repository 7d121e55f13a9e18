"""Cache keys without the network: local files never ask the hub; a hub id is resolved once, to its local files."""

from __future__ import annotations

import shutil
import socket

import pytest
from huggingface_hub import constants

from medkor.data import MedKorDataModule
from medkor.data.cache import resolve
from medkor.data.fingerprint import resolve_tokenizer

REPO = "medkor-test/tiny-tokenizer"


@pytest.fixture
def network_calls(monkeypatch):
    """Block the network as a compute node without internet does, with HF_HUB_OFFLINE unset; record each try."""
    calls: list[object] = []

    def refuse(*args, **kwargs):
        calls.append(args[0] if args else kwargs)
        raise OSError("network blocked by the test")

    original_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse(address)
        return original_connect(self, address)

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    resolve_tokenizer.cache_clear()
    yield calls
    resolve_tokenizer.cache_clear()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tokenizer_dir):
    """A local hub cache holding REPO's tokenizer at one commit, made `main` (as a download leaves it)."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tokenizer_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_local_tokenizer_and_data_never_touch_the_network(data_dir, tokenizer_dir, network_calls):
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32, num_proc=1)
    dm.prepare_data()  # builds: tokenizer loaded, files hashed
    dm.setup("fit")
    MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32).setup("validate")
    assert network_calls == []


def test_hub_id_is_resolved_once_per_process_to_its_snapshot(data_dir, hub_cache, tokenizer_dir, network_calls):
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=REPO, max_length=32, num_proc=1)
    requests = dm.cache_requests()
    assert {r.tokenizer_path for r in requests} == {str(hub_cache)}  # the hub did not answer: the cached main
    asked = len(network_calls)
    assert asked >= 1  # it did ask, once, which commit is current
    dm.prepare_data()
    dm.setup("fit")
    MedKorDataModule(data_dir=str(data_dir), tokenizer_path=REPO, max_length=32).setup("fit")
    assert len(network_calls) == asked  # not again: not per split, not per prepare or setup
    # the key is the tokenizer's content: the same as naming the folder itself
    local = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=32)
    assert [resolve(r)[1] for r in requests] == [resolve(r)[1] for r in local.cache_requests()]


def test_offline_hub_id_asks_nothing(data_dir, hub_cache, network_calls, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=REPO, max_length=32, num_proc=1)
    dm.prepare_data()
    dm.setup("fit")
    assert network_calls == [] and dm.cache_requests()[0].tokenizer_path == str(hub_cache)
