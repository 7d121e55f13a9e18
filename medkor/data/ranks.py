"""`medkor prepare` on several ranks: each builds its share of the pieces, one assembles the splits.

Ranks come from the launcher: `RANK`/`WORLD_SIZE` (torchrun), or SLURM's task and
array indices (`srun`, `sbatch --array`; tasks of an array element times elements).
Ranks that write to the same cache share its work: all of them with
`prepare_data_per_node: false` (a shared `cache_dir`), the ranks of one node otherwise
(`LOCAL_RANK`/`LOCAL_WORLD_SIZE`, SLURM's local task id), since a node-local
`cache_dir` is seen by that node only.

Every piece of every split goes to one rank, largest first to the least loaded
(`cache.share_out`); each rank tokenizes its missing pieces and packs their row
segments, holding a lock that says it is alive (`<cache_dir>/.ranks/`). Rank 0 then
waits until every other rank is done (or dead) and assembles the splits
(`ensure_caches`: segment facts and the tail; any piece or segment still missing, the
share of a rank that died or never started, it builds itself). A killed rank's
finished pieces stay in the store and are reused by the rerun. Plain Python.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from medkor.data.cache import CacheResult, build_pieces_for, ensure_caches
from medkor.data.fingerprint import hash_text
from medkor.data.key import CacheRequest, resolve
from medkor.data.lock import BuildLock, LockTimeout
from medkor.data.pieces import PieceStore, plan_pieces

RANKS_FOLDER = ".ranks"
START_GRACE = 30.0  # seconds rank 0 waits, from its start, for ranks that have not shown up yet
TELL_EVERY = 60.0


class RankError(ValueError):
    """Launcher variables that do not describe a rank (the message names them)."""


@dataclass(frozen=True)
class Share:
    """This process's place among the ranks that build into the same cache."""

    rank: int = 0
    world: int = 1
    launcher: str = "one process"


def _int(env: Mapping[str, str], name: str, default: Optional[int] = None) -> Optional[int]:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RankError(f"{name}={value!r} is not a whole number (set by the launcher)") from None


def _slurm_tasks_on_node(env: Mapping[str, str]) -> Optional[int]:
    """Tasks on this node from SLURM_TASKS_PER_NODE (`2(x3),1` lists nodes in order) and SLURM_NODEID."""
    spec, node = env.get("SLURM_TASKS_PER_NODE"), _int(env, "SLURM_NODEID")
    if not spec or node is None:
        return _int(env, "SLURM_NTASKS_PER_NODE")
    counts: list[int] = []
    for part in spec.split(","):
        tasks, _, repeat = part.partition("(x")
        counts.extend([int(tasks)] * (int(repeat.rstrip(")")) if repeat else 1))
    return counts[node] if node < len(counts) else None


def launch_share(per_node: bool, env: Optional[Mapping[str, str]] = None) -> Share:
    """The share of this process, from the launcher's variables (one process when there are none)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        if per_node and "LOCAL_WORLD_SIZE" in env:
            rank, world = _int(env, "LOCAL_RANK", 0), _int(env, "LOCAL_WORLD_SIZE", 1)
            share = Share(rank, world, "LOCAL_RANK/LOCAL_WORLD_SIZE: this node's ranks, prepare_data_per_node")
        elif per_node:  # set by hand, not by torchrun: the ranks are taken to share this node
            share = Share(_int(env, "RANK"), _int(env, "WORLD_SIZE"),
                          "RANK/WORLD_SIZE without LOCAL_WORLD_SIZE: taken as the ranks of this node")
        else:
            share = Share(_int(env, "RANK"), _int(env, "WORLD_SIZE"), "RANK/WORLD_SIZE")
    elif "SLURM_PROCID" in env or "SLURM_ARRAY_TASK_ID" in env:
        tasks, task = _int(env, "SLURM_NTASKS", 1), _int(env, "SLURM_PROCID", 0)
        count = _int(env, "SLURM_ARRAY_TASK_COUNT", 1)
        first, step = _int(env, "SLURM_ARRAY_TASK_MIN", 0), _int(env, "SLURM_ARRAY_TASK_STEP", 1) or 1
        element = (_int(env, "SLURM_ARRAY_TASK_ID", first) - first) // step
        if per_node:
            local = _slurm_tasks_on_node(env)
            share = Share(_int(env, "SLURM_LOCALID", 0), local or 1, "srun (this node's tasks: prepare_data_per_node)")
        else:
            share = Share(element * tasks + task, count * tasks, "SLURM array" if count > 1 else "srun")
    else:
        return Share()
    if not 0 <= share.rank < share.world:
        raise RankError(f"rank {share.rank} is outside 0..{share.world - 1} ({share.launcher}); check the launcher's "
                        "RANK/WORLD_SIZE or SLURM variables")
    return share


def _run_name(requests: list[CacheRequest]) -> str:
    """The same on every rank that builds the same splits: their keys."""
    return "prepare-" + hash_text(*sorted(resolve(r).key for r in requests))[:20]


def piece_keys(requests: list[CacheRequest]) -> dict[str, PieceStore]:
    """Every distinct piece of these splits, with the store it belongs in."""
    keys: dict[str, PieceStore] = {}
    for request in requests:
        store = PieceStore(Path(request.cache_dir))
        keys.update((ref.key, store) for ref in plan_pieces(request, resolve(request), store))
    return keys


def _rank_lock(cache_dir: Path, run: str, rank: int) -> BuildLock:
    return BuildLock(cache_dir / RANKS_FOLDER / f"{run}-rank{rank}.lock", what=f"{run} rank {rank}")


def prepare_share(requests: list[CacheRequest], share: Share, num_proc: Optional[int], timeout: float,
                  log: logging.Logger, started: Optional[float] = None) -> tuple[int, Optional[list[CacheResult]]]:
    """Build this rank's share of the pieces; on rank 0 then wait for the others and assemble.

    Returns (pieces built here, the split results on rank 0 or None on the other ranks).
    """
    started = time.monotonic() if started is None else started
    cache_dir = Path(requests[0].cache_dir)
    run = _run_name(requests)
    with _rank_lock(cache_dir, run, share.rank):
        built = build_pieces_for(requests, share.rank, share.world, num_proc=num_proc)
    if share.rank != 0:
        return built, None
    others = [_rank_lock(cache_dir, run, rank) for rank in range(1, share.world)]
    waiting = time.monotonic()  # the wait is bounded from here: rank 0's own share may take long
    told = waiting - TELL_EVERY
    keys = piece_keys(requests)
    while True:
        missing = sum(not store.has(key) for key, store in keys.items())
        alive = [rank for rank, lock in enumerate(others, start=1) if lock.live_holder() is not None]
        if not missing and not alive:  # every piece there, and every rank done packing its segments
            break
        now = time.monotonic()
        if not alive and now - started >= START_GRACE:
            log.info("%d pieces missing and no other rank is building: rank 0 builds them", missing)
            break
        if now - waiting > timeout:
            raise LockTimeout(
                f"gave up after {now - waiting:.0f} s waiting for ranks {alive} to build {missing} pieces "
                f"({cache_dir / RANKS_FOLDER}); rerun `medkor prepare` (finished pieces are kept) or raise "
                "data.lock_timeout"
            )
        if now - told >= TELL_EVERY:
            told = now
            log.info("rank 0 waits for ranks %s: %d pieces missing", alive or "not started yet", missing)
        time.sleep(0.5)
    results = ensure_caches(requests)
    for lock in others:  # the marks of ranks that are done (or dead); a live straggler keeps its own
        if lock.live_holder() is None:
            for path in (lock.owner, lock.path):
                path.unlink(missing_ok=True)
    _rank_lock(cache_dir, run, 0).path.unlink(missing_ok=True)
    return built, results
