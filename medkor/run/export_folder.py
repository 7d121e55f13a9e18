"""Where an export lands: a folder that is empty, or holds no file of the export's names that it did not write.

An export is written into a staging folder beside its target and put in place by
`medkor.run.publish.publish_folder`: a kill at any instant leaves the old folder or
the new one, whole. `.medkor-export.json` (the marker of `medkor.run.publish`) lists
what the export wrote, so `--overwrite` replaces exactly that and carries every
other file of the folder (the user's) into the new one. Only the marker counts: a
file the export would write that no marker lists (a base model's `config.json`, an
extend-vocab folder's `tokenizer.json`, an export made before the marker) is refused.
Plain Python: usable without torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from medkor.run.publish import (
    TargetError, check_target, discard, foreign_files, foreign_files_message, marker_files, marker_name,
    publish_folder, staging_for, write_marker,
)

COMMAND = "export"
MARKER = marker_name(COMMAND)
# names a Hugging Face save may write: a folder holding one of them that no export marker lists is refused
# before the model is built (the user's base model, an extend-vocab folder, an export made before the marker)
_HF_FILES = re.compile(
    r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
    r"tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|chat_template\.jinja|"
    r"preprocessor_config\.json|processor_config\.json)$"
)


class ExportFolderError(ValueError):
    """The target folder cannot take the export as asked; the message says what to do."""


def previous_export_files(out: Path) -> set[str]:
    """Names of the files an earlier export wrote into `out`, as its marker lists them; none without a marker."""
    return marker_files(out, COMMAND) or set()


def check_export_target(out: Path, overwrite: bool, written: Optional[list[str]] = None) -> None:
    """Refuse a link, a file, the working folder, a non-empty `out` without `overwrite`, or a file in `out` that
    the export would replace without having written it (no export marker lists it).

    `written`: the names the new export holds; before it is built (the cheap check the
    command makes before loading a model), every name a Hugging Face save may write.
    """
    try:
        check_target(out)
    except TargetError as err:
        raise ExportFolderError(str(err)) from None
    if not out.is_dir():
        return
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    names = set(written) | {MARKER} if written is not None else {n for n in present if _HF_FILES.match(n)}
    foreign = foreign_files(out, COMMAND, names)
    if foreign:
        raise ExportFolderError(foreign_files_message(out, COMMAND, foreign))
    if overwrite:
        return
    shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
    if previous_export_files(out):
        what = "pass --overwrite to replace the earlier export in it (files it did not write are kept)"
    else:
        what = "it holds no earlier export: choose a new folder, or pass --overwrite to write beside these files"
    raise ExportFolderError(f"--out {out}: folder is not empty ({shown}); {what}")


def staging_folder(out: Path) -> Path:
    """A fresh staging folder beside `out` (same file system); dead exports' leftovers are swept first."""
    return staging_for(out)


def publish_export(staging: Path, out: Path, overwrite: bool) -> list[str]:
    """Put the export in `staging` in place as `out`; return the names of the files it holds.

    Files in `out` that no earlier export wrote are kept; a kill leaves the old or the new export whole.
    """
    files = sorted(p.name for p in staging.iterdir() if p.is_file())
    umask = os.umask(0)
    os.umask(umask)
    for name in files:  # weights written through a temporary file come out 0600; give them the folder's usual mode
        os.chmod(staging / name, 0o666 & ~umask)
    write_marker(staging, COMMAND, files)
    keep: set[str] = set()
    if out.is_dir() and not out.is_symlink():
        check_export_target(out, overwrite, written=files)
        keep = {p.name for p in out.iterdir()} - previous_export_files(out)
    publish_folder(staging, out, keep=keep)
    return files


def discard_staging(staging: Optional[Path]) -> None:
    """Remove the staging folder of an export that failed or was interrupted."""
    discard(staging)
