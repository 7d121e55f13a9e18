"""Mixtures: exact shares, replay switched on and off, named weights changed, exact from any position on resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medkor.data.mixture import ConcatRows, Mixture, MixtureSampler, ReplayMix, hysteresis
from medkor.data.sources import DataError


def _epoch(sampler, epoch, start=0):
    sampler.set_epoch(epoch)
    sampler.start = start
    return list(iter(sampler))


def _replay(num_rows, num_replay, seed, mix, **kwargs):
    return MixtureSampler([num_rows, num_replay], seed, mix, **kwargs)


def test_fixed_ratio_mixes_deterministically_and_exactly():
    runs = [_epoch(_replay(1000, 50, seed=3, mix=ReplayMix(0.2)), 0) for _ in range(2)]
    assert runs[0] == runs[1]
    replay = [i for i in runs[0] if i >= 1000]
    assert len(runs[0]) == 1000 and len(replay) == 200  # the share exactly, not a binomial draw
    for n in range(1, 1001):  # and in every prefix to within one row
        assert abs(sum(i >= 1000 for i in runs[0][:n]) - 0.2 * n) < 1
    train = [i for i in runs[0] if i < 1000]
    assert len(set(train)) == len(train)  # training rows without repeats, replay rows cycled
    assert set(replay) == set(range(1000, 1050))
    other = _epoch(_replay(1000, 50, seed=3, mix=ReplayMix(0.2)), 1)
    assert other != runs[0]
    # the 200 training rows replay displaced come first in the next epoch: every row once in two epochs
    assert sorted(train + [i for i in other if i < 1000][:200]) == list(range(1000))


def test_switches_apply_from_the_next_draw_and_resume_exactly():
    mix = ReplayMix(0.5, initially_on=False)
    sampler = _replay(400, 40, seed=0, mix=mix)
    sampler.set_epoch(2)
    iterator = iter(sampler)
    first = [next(iterator) for _ in range(100)]
    assert all(i < 400 for i in first)  # off: training rows only
    assert mix.switch(True) and not mix.switch(True)  # on from draw 100
    middle = [next(iterator) for _ in range(150)]
    assert sum(i >= 400 for i in middle) == 75
    mix.switch(False)
    rest = list(iterator)
    assert all(i < 400 for i in rest) and len(first + middle + rest) == 400
    assert mix.switches == [(2, 100, True), (2, 250, False)]

    # a resumed run: the switches from the checkpoint, then the loader's position
    for start in (0, 100, 101, 180, 250, 399):
        resumed = ReplayMix(0.5, initially_on=False)
        resumed.load_state_dict(mix.state_dict())
        again = _replay(400, 40, seed=0, mix=resumed)
        assert _epoch(again, 2, start) == (first + middle + rest)[start:]


def test_ranks_take_slices_of_one_order():
    whole = _epoch(_replay(101, 10, seed=1, mix=ReplayMix(0.3), batch_size=2), 0)
    parts = [_epoch(_replay(101, 10, seed=1, mix=ReplayMix(0.3), num_replicas=2, rank=r), 0) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 51
    assert [i for pair in zip(*parts) for i in pair] == whole


def test_named_weights_change_from_the_next_global_batch():
    mix = Mixture(["ko", "en", "dict"], [0.6, 0.3, 0.1])
    sampler = MixtureSampler([600, 300, 100], 4, mix, batch_size=10)
    sampler.set_epoch(0)
    iterator = iter(sampler)
    first = [next(iterator) for _ in range(15)]  # one global batch and a half drawn
    assert mix.set_weight("en", 0.0) and mix.changes == [(0, 20, (0.6, 0.0, 0.1))]
    assert not mix.set_weight("en", 0.0)
    rest = list(iterator)
    assert all(not 600 <= i < 900 for i in rest[5:])  # from the next global batch (position 20) on
    assert sampler.source_counts(20).tolist() == [12, 6, 2]
    with pytest.raises(ValueError, match="no source 'de'"):
        mix.set_weight("de", 1.0)
    resumed = Mixture(["ko", "en", "dict"], [0.6, 0.3, 0.1])
    resumed.load_state_dict(mix.state_dict())
    assert _epoch(MixtureSampler([600, 300, 100], 4, resumed, batch_size=10), 0, 20) == rest[5:]
    with pytest.raises(ValueError, match="resume with the same data sources"):
        Mixture(["ko", "en"], [1, 1]).load_state_dict(mix.state_dict())


def test_state_of_another_replay_is_refused():
    with pytest.raises(ValueError, match="replay ratio must be in"):
        ReplayMix(1.0)
    with pytest.raises(ValueError, match="resume with the same data.replay"):
        ReplayMix(0.2).load_state_dict(ReplayMix(0.3).state_dict())


@pytest.mark.parametrize(
    "on, value, expected",
    [(False, 3.5, True), (False, 2.5, False), (True, 2.5, True), (True, 1.9, False), (False, 1.0, False),
     (True, float("nan"), True), (False, float("inf"), False)],
)
def test_hysteresis(on, value, expected):
    assert hysteresis(on, value, start_above=3.0, stop_below=2.0) is expected


def test_concat_rows_index_across_parts():
    rows = ConcatRows([["a", "b"], ["c"]])
    assert len(rows) == 3 and [rows[i] for i in range(3)] == ["a", "b", "c"]
    with pytest.raises(IndexError):
        rows[3]
    assert np.array_equal(rows.bounds, [0, 2, 3])


def test_datamodule_mixes_replay_rows_into_training_batches(tmp_path):
    from pathlib import Path

    from medkor.data import MedKorDataModule
    from tests.data.conftest import korean_docs, write_jsonl

    demo = Path(__file__).resolve().parents[2] / "medkor/assets/demo"
    write_jsonl(tmp_path / "dict/train.jsonl", [{"term": f"용어{i}", "definition": "높은 혈압. " * 3} for i in range(80)])
    write_jsonl(tmp_path / "old/train.jsonl", korean_docs(30))
    dm = MedKorDataModule(data_dir=str(tmp_path / "dict"), tokenizer_path=str(demo / "tokenizer-extended"),
                          format="dictionary", max_length=48, batch_size=4,
                          replay={"path": str(tmp_path / "old"), "format": "text", "ratio": 0.25})
    results = {r.split: r for r in dm.prepare_caches()}
    assert results["replay"].manifest["inputs"]["params"]["format"] == "text"
    dm.setup("fit")
    loader = dm.train_dataloader()
    train_rows = len(dm.datasets["train"])
    order = list(iter(loader.sampler))
    assert len(order) == train_rows and sum(i >= train_rows for i in order) > 0
    replay_rows = {tuple(dm.datasets["replay"][i][0].tolist()) for i in range(len(dm.datasets["replay"]))}
    batches = list(loader)
    assert len(batches) == -(-train_rows // 4)
    seen = [tuple(ids[mask == 1].tolist()) for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]
    assert sum(row in replay_rows for row in seen) == sum(i >= train_rows for i in order)  # the sampler's picks, batched
    state = dm.state_dict()
    assert state == {"replay": dm.replay_mix.state_dict()} and state["replay"]["initially_on"] is True


def _three_sources(tmp_path, **extra):
    from medkor.data import MedKorDataModule
    from tests.data.conftest import korean_docs, write_jsonl

    demo = Path(__file__).resolve().parents[2] / "medkor/assets/demo"
    write_jsonl(tmp_path / "stage/validation.jsonl", korean_docs(6, start=900))
    write_jsonl(tmp_path / "ko/train.jsonl", korean_docs(60))
    write_jsonl(tmp_path / "en/part-1.jsonl", korean_docs(30, start=300))
    write_jsonl(tmp_path / "dict/train.jsonl", [{"term": f"용어{i}", "definition": "높은 혈압. " * 3} for i in range(12)])
    sources = extra.pop("sources", [
        {"name": "ko_med", "path": str(tmp_path / "ko"), "weight": 0.6},
        {"name": "en_med", "path": str(tmp_path / "en" / "*.jsonl"), "weight": 0.3},
        {"name": "dict", "path": str(tmp_path / "dict/train.jsonl"), "format": "dictionary", "weight": 0.1},
    ])
    return MedKorDataModule(data_dir=str(tmp_path / "stage"), tokenizer_path=str(demo / "tokenizer-extended"),
                            max_length=32, batch_size=5, sources=sources, cache_dir=str(tmp_path / "cache"), **extra)


def test_three_weighted_sources_keep_their_shares_at_every_point_of_an_epoch(tmp_path, caplog):
    dm = _three_sources(tmp_path)
    results = {r.split: r for r in dm.prepare_caches()}
    assert {"source-ko_med", "source-en_med", "source-dict", "validation"} <= set(results)
    assert "train" not in results  # data_dir's train files are not read
    assert results["source-dict"].manifest["inputs"]["params"]["format"] == "dictionary"
    dm.setup("fit")
    sizes = [len(dm.datasets[f"source-{n}"]) for n in ("ko_med", "en_med", "dict")]
    assert dm.mixture.names == ["ko_med", "en_med", "dict"] and dm.mixture.epoch_rows == sum(sizes)
    line = next(r.getMessage() for r in caplog.records if "source dict:" in r.getMessage())
    assert "10.0% of each epoch's" in line and "repeated 1.18 times" in line  # 10 % of the epoch is more than its rows
    loader = dm.train_dataloader()
    order = list(iter(loader.sampler))
    bounds = np.cumsum([0, *sizes])
    source = np.searchsorted(bounds, order, side="right") - 1
    assert len(order) == 145  # 141 positions, padded by wrapping to whole global batches of 5
    for n in (1, 7, 25, 50, 70, 141):
        counts = np.bincount(source[:n], minlength=3)
        assert np.all(np.abs(counts - np.array([0.6, 0.3, 0.1]) * n) < 1), (n, counts)
    assert set(np.asarray(order)[source == 2]) == set(range(bounds[2], bounds[3]))  # every dictionary row, repeated
    batches = list(loader)
    assert loader.seen_rows.sum() == len(batches) * 5 and loader.seen()["ko_med"][0] == int((source == 0).sum())
    assert loader.seen()["dict"][1] == sum(len(dm.datasets["source-dict"][i - bounds[2]][0])
                                          for i in np.asarray(order)[source == 2])
    assert dm.state_dict() == {"mixture": dm.mixture.state_dict()}


def test_an_empty_or_missing_source_is_an_error_naming_it(tmp_path):
    from medkor.data.sources import DataError
    from tests.data.conftest import write_jsonl

    with pytest.raises(DataError, match=r"data.sources\[1\] \(en_med\): .*nowhere does not exist"):
        _three_sources(tmp_path, sources=[{"name": "ko_med", "path": str(tmp_path / "ko"), "weight": 1},
                                          {"name": "en_med", "path": str(tmp_path / "nowhere"), "weight": 1}])
    with pytest.raises(DataError, match=r"data.sources\[0\] \(ko_med\): give exactly one of weight"):
        _three_sources(tmp_path, sources=[{"name": "ko_med", "path": str(tmp_path / "ko"), "weight": 1, "rows": 5}])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/train.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=r"data.sources\[1\] \(blank\): .*empty/train.jsonl is empty"):
        _three_sources(tmp_path, sources=[{"name": "ko_med", "path": str(tmp_path / "ko"), "weight": 1},
                                          {"name": "blank", "path": str(tmp_path / "empty"), "repeat": 2}])
    (tmp_path / "empty/train.jsonl").write_bytes(b"\n  \n\r\n\t\n")  # blank lines only: no record to cache
    with pytest.raises(DataError, match=r"data.sources\[1\] \(blank\): .*empty/train.jsonl is empty \(no line but"):
        _three_sources(tmp_path, sources=[{"name": "ko_med", "path": str(tmp_path / "ko"), "weight": 1},
                                          {"name": "blank", "path": str(tmp_path / "empty"), "repeat": 2}])
    write_jsonl(tmp_path / "blank/train.jsonl", [{"text": ""}])  # records, none usable: the cache names the file
    dm = _three_sources(tmp_path, sources=[{"name": "ko_med", "path": str(tmp_path / "ko"), "weight": 1},
                                           {"name": "blank", "path": str(tmp_path / "blank"), "repeat": 2}],
                        on_bad_record="skip")
    with pytest.raises(DataError, match=r"blank/train.jsonl: no usable records"):
        dm.prepare_caches()
    from medkor.data.mix_sources import MixSource, epoch_plan
    from medkor.data.formats import FormatSpec
    with pytest.raises(DataError, match=r"data.sources \(b\): b.jsonl gave no rows"):
        epoch_plan([MixSource(n, (Path(f"{n}.jsonl"),), FormatSpec(), "weight", 1) for n in "ab"], [3, 0], [30, 0])


def test_amounts_by_rows_tokens_and_repeats():
    from medkor.data.formats import FormatSpec
    from medkor.data.mix_sources import MixSource, epoch_plan

    def source(name, amount, value):
        return MixSource(name, (Path("x.jsonl"),), FormatSpec(), amount, value)

    sources = [source("a", "weight", 3), source("b", "weight", 1), source("c", "rows", 50), source("d", "repeat", 2),
               source("e", "tokens", 640)]
    epoch_rows, per_epoch, lines = epoch_plan(sources, [100, 20, 10, 7, 40], [0, 0, 0, 0, 40 * 64])
    assert per_epoch == [90, 30, 50, 14, 10] and epoch_rows == 194
    assert "source c: 10 rows" in lines[2] and "repeated 5.00 times" in lines[2]
    assert "a share of them" in lines[0]


def test_weights_by_tokens_share_the_tokens():
    from medkor.data.formats import FormatSpec
    from medkor.data.mix_sources import MixSource, epoch_plan

    sources = [MixSource(n, (Path(f"{n}.jsonl"),), FormatSpec(), "weight", w, weight_by="tokens")
               for n, w in (("long", 0.5), ("short", 0.5))]
    epoch_rows, per_epoch, _ = epoch_plan(sources, [100, 100], [100 * 512, 100 * 128])  # rows of 512 and 128 tokens
    assert epoch_rows == 200 and per_epoch == [40, 160]
    assert per_epoch[0] * 512 == per_epoch[1] * 128  # equal tokens
    mix = Mixture(["long", "short"], per_epoch)
    sampler = MixtureSampler([100, 100], 0, mix, batch_size=8)
    order = np.asarray(_epoch(sampler, 0)[:200])
    tokens = np.where(order < 100, 512, 128)
    for n in range(1, 201):  # every prefix: each source's tokens within one of its rows of half the tokens
        long_tokens = tokens[:n][order[:n] < 100].sum()
        assert abs(long_tokens - 0.5 * tokens[:n].sum()) <= 512, n
    with pytest.raises(DataError, match="same weight_by"):
        from medkor.data.mix_sources import parse_sources
        parse_sources([{"name": "a", "path": __file__, "weight": 1, "weight_by": "tokens"},
                       {"name": "b", "path": __file__, "weight": 1}], FormatSpec())
