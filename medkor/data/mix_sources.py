"""`data.sources`: several named training sources per stage, each with its files, format and amount.

Plain Python without torch (`medkor prepare` reads it): the entries are checked here,
each source is cached as its own split (`source-<name>`, its own key) and leak-checked
like training data, and `epoch_plan` turns the amounts into rows per epoch once the
caches say how many rows and tokens each source has.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from medkor.data.formats import FormatSpec
from medkor.data.sources import DataError, split_files
from medkor.data.val_sets import NAME, SPEC_KEYS

AMOUNTS = ("weight", "rows", "tokens", "repeat")


@dataclass(frozen=True)
class MixSource:
    """One entry of `data.sources`: its files, format, and how much of it an epoch takes.

    `amount` is `weight` (a share of the weighted sources' rows, or of their tokens with
    `weight_by: tokens`), `rows` or `tokens`
    (exactly that many per epoch) or `repeat` (all its rows, `value` times per epoch).
    """

    name: str
    files: tuple[Path, ...]
    spec: FormatSpec
    amount: str
    value: float
    max_samples: Optional[int] = None
    weight_by: str = "rows"  # weight: a share of the rows, or of the tokens

    @property
    def split(self) -> str:
        """The cache split of the source's rows."""
        return f"source-{self.name}"


def source_files(path: str, where: str) -> tuple[Path, ...]:
    """A JSONL file, a folder's `train*.jsonl` (else every `*.jsonl` in it), or a glob of files."""
    if any(c in path for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"{where}: no file matches {path}; point path at a JSONL file, a folder or a glob that matches")
        return tuple(found)
    folder = Path(path)
    if folder.is_file():
        return (folder,)
    if folder.is_dir():
        found = split_files(folder, "train") or sorted(folder.glob("*.jsonl"))
        if not found:
            raise DataError(f"{where}: {path} holds no train*.jsonl or *.jsonl file; point path at a JSONL file")
        return tuple(found)
    raise DataError(f"{where}: {path} does not exist; point path at a JSONL file, a folder or a glob")


def _has_content(path: Path, chunk: int = 1 << 20) -> bool:
    """Whether a file holds anything but whitespace: reads up to its first non-blank byte (one chunk for a data file)."""
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            if block.strip():
                return True
    return False


def parse_sources(entries: Optional[Sequence[Mapping[str, Any]]], base: FormatSpec) -> list[MixSource]:
    """Check `data.sources`: a list of `{name, path, format, <format options>, weight | rows | tokens | repeat,
    max_samples}` (format options default to the stage's, so a stage of one format names none)."""
    if not entries:
        return []
    if isinstance(entries, Mapping) or not isinstance(entries, Sequence):
        raise DataError(f"data.sources must be a list of {{name, path, weight, ...}}, got {type(entries).__name__}")
    out: list[MixSource] = []
    for index, entry in enumerate(entries):
        where = f"data.sources[{index}]"
        if not isinstance(entry, Mapping) or "path" not in entry or "name" not in entry:
            raise DataError(f"{where}: expected {{name: ..., path: FILE_FOLDER_OR_GLOB, weight: 0.5}}, got {entry!r}")
        name = entry["name"]
        where = f"data.sources[{index}] ({name})"
        if not isinstance(name, str) or not NAME.match(name):
            raise DataError(f"{where}: a source's name must be letters, digits, '_', '-' or '.' (it names metrics)")
        if name in {s.name for s in out}:
            raise DataError(f"{where}: the name is used by another source; give each source its own name")
        unknown = sorted(set(entry) - {"name", "path", "max_samples", "weight_by", *AMOUNTS, *SPEC_KEYS})
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; use name, path, max_samples, one of "
                            f"{', '.join(AMOUNTS)}, and format options ({', '.join(SPEC_KEYS)})")
        given = [key for key in AMOUNTS if key in entry]
        if len(given) != 1:
            raise DataError(f"{where}: give exactly one of weight (a share), rows or tokens (per epoch) or repeat "
                            f"(all rows, N times per epoch); got {', '.join(given) or 'none'}")
        amount, value = given[0], entry[given[0]]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0 \
                or (amount != "weight" and value <= 0):
            raise DataError(f"{where}.{amount} must be a number {'>= 0' if amount == 'weight' else '> 0'}, got {value!r}")
        options = {key: entry[key] for key in SPEC_KEYS if key in entry}
        try:
            spec = replace(base, **options)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: {err}") from None
        limit = entry.get("max_samples")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise DataError(f"{where}.max_samples must be a positive integer, got {limit!r}")
        files = source_files(str(entry["path"]), where)
        if not any(_has_content(f) for f in files):
            raise DataError(f"{where}: {', '.join(map(str, files[:3]))} {'is' if len(files) == 1 else 'are'} empty "
                            "(no line but blank ones); give the source records, or remove it")
        weight_by = entry.get("weight_by", "rows")
        if weight_by not in ("rows", "tokens") or (weight_by != "rows" and amount != "weight"):
            raise DataError(f"{where}.weight_by must be rows or tokens, with a weight; got {weight_by!r}")
        out.append(MixSource(name, files, spec, amount, float(value), limit, weight_by))
    if len({s.weight_by for s in out if s.amount == "weight"}) > 1:
        raise DataError("data.sources: the weights are shares of rows for some sources and of tokens for others; "
                        "give every weighted source the same weight_by")
    if sum(s.value for s in out if s.amount == "weight") <= 0 and all(s.amount == "weight" for s in out):
        raise DataError("data.sources: every weight is 0; give at least one source a weight above 0")
    return out


def epoch_plan(sources: Sequence[MixSource], rows: Sequence[int], tokens: Sequence[int]) -> tuple[int, list[float], list[str]]:
    """Positions per epoch, the blend weights (rows of each source per epoch) and a line per source.

    Sources by `rows`, `tokens` (converted with the source's tokens per row) and `repeat`
    take exactly that; sources by `weight` share the rest, whose size is their own rows
    once (weights normalised among them). A source whose rows per epoch exceed its
    rows is repeated (each pass in a fresh order); one with fewer continues in the next epoch.
    """
    for source, n in zip(sources, rows):
        if n < 1:
            raise DataError(f"data.sources ({source.name}): {', '.join(map(str, source.files[:3]))} gave no rows; "
                            "give the source records, or remove it")
    fixed = []
    for source, n, t in zip(sources, rows, tokens):
        if source.amount == "rows":
            fixed.append(float(source.value))
        elif source.amount == "repeat":
            fixed.append(source.value * n)
        elif source.amount == "tokens":
            fixed.append(max(1.0, round(source.value / max(t / n, 1e-9))))
        else:
            fixed.append(None)
    # a share of tokens is a share of rows of w / (tokens per row): exact to within a row's tokens for packed rows
    weighted = [(j, s.value if s.weight_by == "rows" else s.value / max(tokens[j] / rows[j], 1e-9))
                for j, s in enumerate(sources) if s.amount == "weight"]
    pool = sum(rows[j] for j, w in weighted if w > 0)
    total_weight = sum(w for _, w in weighted)
    per_epoch = list(fixed)
    for j, w in weighted:
        per_epoch[j] = pool * w / total_weight if total_weight > 0 else 0.0
    epoch_rows = max(1, int(round(sum(per_epoch))))
    lines = []
    for source, n, want in zip(sources, rows, per_epoch):
        share = want / sum(per_epoch)
        times = want / n
        how = (f"repeated {times:.2f} times" if times > 1.0005 else "all of them once" if times > 0.9995
               else "a share of them, the rest in later epochs" if times > 0 else "none until its weight is raised")
        lines.append(f"source {source.name}: {n:,} rows, {share:.1%} of each epoch's {epoch_rows:,} "
                     f"({want:,.0f} rows: {how})")
    return epoch_rows, per_epoch, lines
