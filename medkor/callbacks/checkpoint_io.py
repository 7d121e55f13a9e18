"""`AtomicCheckpointIO`: checkpoints that are never torn, loaded without running pickled code.

Saving: each checkpoint is written by `torch.save` into a temporary file in the
checkpoint's own folder, fsynced, renamed onto its name with `os.replace` and the
folder fsynced (`medkor.run.atomic`). A full disk, an I/O error or a killed process
never leaves a partial file under a checkpoint's name, and never harms the file
already there (`last.ckpt` being overwritten keeps its previous content). Failures
are raised as `OSError`s naming the checkpoint, the cause and what to do.

Loading: first the CRC-32 of every record of the archive is checked
(`medkor.run.zip_crc`; `torch.load` never checks them), so a file whose bytes
changed after it was written (a flipped bit inside a tensor loads as a slightly
different number) is refused by name, with what to do, before anything trains on
it. Then always `torch.load(..., weights_only=True)`, which rebuilds tensors,
containers and primitive values only, plus the few plain classes that medkor puts
into checkpoints (`allow_medkor_checkpoint_types`, applied on import). A request for
`weights_only=False` is refused with an error rather than silently honoured or
ignored: a checkpoint this plugin cannot load safely is not loaded at all. A file
that cannot be read raises `CheckpointLoadError` (a `ValueError`) in one paragraph:
the file, and whether it is truncated or not a checkpoint, or which unsafe type it
holds.

What a medkor checkpoint holds (Lightning 2.6, `medkor fit`): `state_dict` and
`optimizer_states` (tensors, AdamW moments and steps), `lr_schedulers` (the
`LambdaLR` state: numbers, with `lr_lambdas` saved as `None` because the schedule is a
function), `loops` and `callbacks` (`ModelCheckpoint`, `KorMedMCQAEval`: dicts of
numbers and strings), `hyper_parameters` (strings and numbers; `lora` is a dict under
the CLI and a `LoraOptions` when the module is built in Python; a `pathlib.Path` when a
script passes one) and `medkor_trainable_only`. All of it loads under `weights_only`.

Remote paths (`s3://...`) are saved and loaded by Lightning's `TorchCheckpointIO`
(its fsspec transaction), still with `weights_only=True`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medkor.run.atomic import atomic_write
from medkor.run.zip_crc import ZipCrcError, check_zip_crcs

_UNSAFE_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_ELSEWHERE = ("save checkpoints to a folder on a larger disk (ModelCheckpoint's dirpath, or the trainer's "
              "default_root_dir)")


log = logging.getLogger(__name__)


class CheckpointLoadError(ValueError):
    """A checkpoint file could not be loaded (truncated, not a checkpoint, or an unsafe type inside)."""


def medkor_checkpoint_types() -> list[type]:
    """The non-builtin classes a medkor checkpoint may hold, all plain data."""
    from medkor.model.policies import LoraOptions

    return [LoraOptions, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def allow_medkor_checkpoint_types() -> None:
    """Let `torch.load(weights_only=True)` rebuild the classes of `medkor_checkpoint_types` (idempotent).

    The one place that lists them: add a class here when medkor starts saving it, and
    only if rebuilding it runs no code beyond setting attributes.
    """
    torch.serialization.add_safe_globals(medkor_checkpoint_types())


def _is_remote(path: _PATH) -> bool:
    text = str(path)
    return "://" in text and not text.startswith("file://")


def _load_error(path: _PATH, err: BaseException) -> CheckpointLoadError:
    where = os.fspath(path)
    text = str(err)
    unsafe = _UNSAFE_GLOBAL_RE.search(text) if isinstance(err, pickle.UnpicklingError) else None
    if unsafe:
        return CheckpointLoadError(
            f"{where}: refused to load the checkpoint: it contains the Python object `{unsafe[1]}`, which is not a "
            "tensor, a plain value or one of medkor's checkpoint types, and rebuilding it could run code from the "
            "file. Checkpoints written by `medkor fit` never contain one; do not load this file unless you know "
            "where it comes from (a type medkor itself saves belongs in "
            "medkor.callbacks.checkpoint_io.medkor_checkpoint_types)."
        )
    try:
        size: Optional[int] = os.path.getsize(where)
    except OSError:
        size = None
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    first = unpickler[1].strip() if unpickler else text.strip().split("\n")[0].split(". ")[0].rstrip(".")
    detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
    if size == 0:
        reason = "the file is empty (a save that never finished, or not a checkpoint)"
    elif size and zipfile.is_zipfile(where):
        reason = "the file is a damaged torch.save archive"
    else:
        reason = ("the file is not a complete torch.save archive: it is truncated (copied or written only in part) "
                  "or not a checkpoint at all")
    return CheckpointLoadError(f"{where}: cannot read the checkpoint: {reason} ({size} bytes; {detail}).")


def _sound_checkpoints(path: Path, limit: int = 3, tries: int = 8) -> list[str]:
    """Up to `limit` other `*.ckpt` files beside `path` whose CRC-32s check, newest first.

    At most `tries` candidates are read (newest first): each check reads the whole file.
    Files without CRCs, not archives, or damaged themselves are left out.
    """
    try:
        others = [p for p in path.parent.glob("*.ckpt") if p.name != path.name and p.is_file()]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    sound: list[str] = []
    for candidate in others[:tries]:
        try:
            if check_zip_crcs(candidate):
                sound.append(candidate.name)
        except (ZipCrcError, OSError):
            continue
        if len(sound) == limit:
            break
    return sound


def verify_checkpoint_file(path: _PATH) -> None:
    """Refuse a local checkpoint whose bytes changed since `torch.save` wrote them (record CRC-32s).

    A file that is no zip archive at all is left to `torch.load`, whose error says
    what it is (truncated, empty, not a checkpoint). A file written without CRCs is
    loaded with a warning.

    Raises:
        CheckpointLoadError: a record fails its CRC-32 check; the message names the file,
            the record and what to do.
    """
    where = os.fspath(path)
    try:
        checked = check_zip_crcs(where)
    except ZipCrcError as err:
        if err.record is None:
            return  # not an archive: torch.load names the problem
        folder = Path(where).parent
        sound = _sound_checkpoints(Path(where))
        nearby = (f"give --ckpt_path another checkpoint (whose CRC-32s check, newest first, in {folder}: "
                  f"{', '.join(sound)})" if sound else
                  f"give --ckpt_path another checkpoint (none in {folder} has CRC-32s that check)")
        raise CheckpointLoadError(
            f"{where}: the checkpoint is damaged and was not loaded: {err} (a disk, copy or memory error, not a "
            f"training problem); {nearby}, or copy the file again from where it came from."
        ) from None
    if not checked:
        log.warning("%s: written without CRC-32s (torch's compute_crc32 off): its bytes cannot be checked", where)


def load_checkpoint_file(path: _PATH, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with medkor's types allowed, and one-paragraph errors.

    `mmap=True` maps the tensors from the file instead of reading them (for a look at
    the hyperparameters of a large checkpoint without holding all of it in memory).
    Every record's CRC-32 is checked first (`verify_checkpoint_file`; once per file and
    process).

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointLoadError: damaged (a CRC-32 differs), truncated, not a checkpoint, or holding a type that is
            not safe to rebuild.
    """
    where = os.fspath(path)
    if os.path.isdir(where):
        raise CheckpointLoadError(
            f"{where}: is a folder, not a checkpoint file (a sharded FSDP or DeepSpeed checkpoint is loaded by "
            "its strategy)"
        )
    if not os.path.exists(where):
        raise FileNotFoundError(f"{where}: checkpoint not found")
    verify_checkpoint_file(where)
    try:
        return torch.load(where, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError,
            zipfile.BadZipFile, KeyError, IndexError) as err:  # torch reports a bad file in all of these
        raise _load_error(where, err) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning `CheckpointIO` with atomic, durable saves and `weights_only=True` loads.

    Use as a trainer plugin: `Trainer(plugins=[AtomicCheckpointIO()])`, or in YAML
    `trainer.plugins: [{class_path: medkor.callbacks.checkpoint_io.AtomicCheckpointIO}]`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        """Write `checkpoint` to `path` atomically; `path`'s folder is created if missing.

        Raises:
            TypeError: `storage_options` given (not supported, as in `TorchCheckpointIO`).
            OSError: the write failed (`medkor.run.atomic.AtomicWriteError`, message names the path,
                the cause and what to do); `path` is unchanged and no temporary file is left.
        """
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} does not take storage_options (got {storage_options!r}); "
                "call Trainer.save_checkpoint without them"
            )
        if _is_remote(path):
            return super().save_checkpoint(checkpoint, path)
        atomic_write(Path(path), lambda handle: torch.save(checkpoint, handle), what="checkpoint",
                     elsewhere=_ELSEWHERE)

    def load_checkpoint(
        self, path: _PATH, map_location: Optional[Any] = "cpu", weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        """Load with `weights_only=True`.

        Raises:
            ValueError: `weights_only=False` was asked for (refused, see the module docstring).
            FileNotFoundError: no file at `path`.
            CheckpointLoadError: truncated, not a checkpoint, or holding an unsafe type.
        """
        if weights_only is False:
            raise ValueError(
                f"{path}: {type(self).__name__} loads checkpoints with weights_only=True only; drop "
                "weights_only=False (medkor checkpoints load without it), or load a trusted file of another kind "
                "with torch.load yourself"
            )
        if _is_remote(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, map_location=map_location)


allow_medkor_checkpoint_types()
