import json
import os
import socket

import pytest
import torch.multiprocessing as mp

from medkor.eval.distributed import gather_objects, shard, sync_counts
from medkor.eval.kormedmcqa import EvalSettings, KorMedMCQAEvaluator
from medkor.eval.predictions import count_correct, sort_records


def test_shards_are_disjoint_complete_and_balanced():
    items = list(range(11))
    lengths = [5, 1, 9, 3, 7, 2, 8, 6, 4, 10, 0]
    parts = [shard(items, rank, 3, lengths) for rank in range(3)]
    assert sorted(x for part in parts for x in part) == items
    assert [len(p) for p in parts] == [4, 4, 3]
    assert parts[0][0] == 9  # the longest prompt goes to rank 0 first
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_single_process_sync_and_gather_are_identity():
    assert sync_counts({"nurse": (2, 5), "doctor": (1, 1)}) == {"nurse": (2, 5), "doctor": (1, 1)}
    assert gather_objects([1, 2]) == [1, 2]


def _worker(rank, world, port, model, tokenizer, source, out):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it can hang)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        evaluator = KorMedMCQAEvaluator(EvalSettings(source=source, batch_size=3))
        local = evaluator.evaluate(model, tokenizer, rank, world)
        counts = sync_counts(count_correct(local, evaluator.subsets))
        gathered = gather_objects(local)
        if rank == 0:
            with open(out, "w", encoding="utf-8") as handle:
                json.dump({"counts": counts, "records": sort_records(gathered, evaluator.subsets), "local": len(local)}, handle)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch, model, tokenizer, sample_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.json"
    # fork: the ranks inherit the imported libraries, model and tokenizer (no seconds of imports)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    args = (2, port, model, tokenizer, str(sample_dir), str(out))
    mp.start_processes(_worker, args=args, nprocs=2, join=True, start_method="fork")
    result = json.loads(out.read_text(encoding="utf-8"))

    evaluator = KorMedMCQAEvaluator(EvalSettings(source=str(sample_dir), batch_size=5))
    single = sort_records(evaluator.evaluate(model, tokenizer), evaluator.subsets)
    assert result["local"] == 11  # 22 questions, half on rank 0
    assert {k: tuple(v) for k, v in result["counts"].items()} == count_correct(single, evaluator.subsets)
    assert [(r["subset"], r["index"], r["pred"]) for r in result["records"]] == [
        (r["subset"], r["index"], r["pred"]) for r in single
    ]
    for got, want in zip(result["records"], single):
        assert list(got["logprobs"].values()) == pytest.approx(list(want["logprobs"].values()), abs=1e-4)
