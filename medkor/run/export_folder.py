"""Where an export lands: a folder that is empty, or holds only what an earlier export wrote.

An export is written into a sibling temporary folder first, then published: renamed
into place when the target is new (or held only an earlier export), or moved in file by
file beside files the export does not own. `.medkor-export.json` (written last) lists
what the export wrote, so `--overwrite` removes exactly that and never a file of the
user's. Plain Python: usable without torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

MARKER = ".medkor-export.json"
# what a Hugging Face save writes, for folders exported before the marker existed
_HF_FILES = re.compile(
    r"^(config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
    r"tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|chat_template\.jinja|"
    r"preprocessor_config\.json|processor_config\.json)$"
)


class ExportFolderError(ValueError):
    """The target folder cannot take the export as asked; the message says what to do."""


def previous_export_files(out: Path) -> set[str]:
    """Names of the files an earlier export wrote into `out` (from its marker, else by Hugging Face's names)."""
    marker = out / MARKER
    if marker.is_file():
        try:
            return set(json.loads(marker.read_text(encoding="utf-8"))["files"]) | {MARKER}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return {p.name for p in out.iterdir() if p.is_file() and _HF_FILES.match(p.name)} if out.is_dir() else set()


def check_export_target(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless `overwrite`; cheap, so the command calls it before loading a model."""
    if out.exists() and not out.is_dir():
        raise ExportFolderError(f"--out {out}: is a file; give a folder")
    if not out.is_dir() or overwrite:
        return
    present = sorted(p.name for p in out.iterdir())
    if present:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        if previous_export_files(out):
            what = "pass --overwrite to replace the earlier export in it (files it did not write are kept)"
        else:
            what = "it holds no earlier export: choose a new folder, or pass --overwrite to write beside these files"
        raise ExportFolderError(f"--out {out}: folder is not empty ({shown}); {what}")


def staging_folder(out: Path) -> Path:
    """A fresh temporary folder beside `out` (same file system, so publishing is a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def publish_export(staging: Path, out: Path, overwrite: bool) -> list[str]:
    """Move the export in `staging` to `out`; return the names of the files it holds."""
    files = sorted(p.name for p in staging.iterdir() if p.is_file())
    umask = os.umask(0)
    os.umask(umask)
    for name in files:  # weights written through a temporary file come out 0600; give them the folder's usual mode
        os.chmod(staging / name, 0o666 & ~umask)
    (staging / MARKER).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
    if not out.exists():
        os.replace(staging, out)
        return files
    check_export_target(out, overwrite)
    owned = previous_export_files(out)
    present = {p.name for p in out.iterdir()}
    if present <= owned:  # only an earlier export: swap the folders whole
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
        return files
    (out / MARKER).unlink(missing_ok=True)  # the folder is not a whole export until the new marker lands
    for name in owned & present:
        if (out / name).is_file():
            (out / name).unlink()
    for name in files:
        os.replace(staging / name, out / name)
    os.replace(staging / MARKER, out / MARKER)
    shutil.rmtree(staging, ignore_errors=True)
    return files


def discard_staging(staging: Optional[Path]) -> None:
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
