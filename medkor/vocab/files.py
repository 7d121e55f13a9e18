"""Loading a tokenizer folder, with a damaged file named in one line.

transformers reads `tokenizer.json` and its companions with `json.load`; a file cut
short by an interrupted copy, or bytes that are not UTF-8, surface as a bare
`JSONDecodeError` or `UnicodeDecodeError` that names no file. `load_tokenizer` loads as
transformers does and, when that fails, looks at the folder's JSON files itself and
raises `TokenizerFileError` naming the damaged file, where, and what to do. The check
costs nothing on a good folder: it runs only after a failed load.

Plain Python (transformers imported on the first load), shared by training
(`medkor.model.loading`) and the data cache (the tokenizer of the cache key).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

# the JSON files a Hugging Face tokenizer folder may hold, in the order transformers needs them
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json")
_WHAT_TO_DO = ("copy the tokenizer files again from the model they belong to (or the hub), or rebuild the folder "
               "with `medkor extend-vocab`")


class TokenizerFileError(ValueError):
    """A tokenizer file is damaged (not UTF-8, not JSON, cut short); the message names it and what to do."""


def damaged_tokenizer_file(folder: Union[str, Path]) -> Optional[str]:
    """What is wrong with the first damaged JSON file of a tokenizer folder (path, place, cause), or None."""
    folder = Path(folder)
    for name in TOKENIZER_JSON_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError as err:
            return f"{path}: cannot be read ({err.strerror or err})"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            return f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start} of {len(data)})"
        try:
            json.loads(text)
        except ValueError as err:
            line, column = getattr(err, "lineno", "?"), getattr(err, "colno", "?")
            reason = getattr(err, "msg", str(err))
            cut = len(text.rstrip()) - getattr(err, "pos", 0) < 2 or reason.startswith("Unterminated")
            return (f"{path}: not valid JSON ({reason}: line {line} column {column}"
                    + (f"; it ends after {len(data)} bytes: cut short?" if cut else "") + ")")
    return None


def tokenizer_file_error(path: Union[str, Path]) -> Optional[TokenizerFileError]:
    """The error to raise for a tokenizer folder with a damaged file (named, with what to do), or None."""
    problem = damaged_tokenizer_file(path) if Path(path).is_dir() else None
    return None if problem is None else TokenizerFileError(f"tokenizer {path}: {problem}; {_WHAT_TO_DO}")


def load_tokenizer(path: Union[str, Path], trust_remote_code: bool = False) -> Any:
    """`AutoTokenizer.from_pretrained(path)`; a damaged file of a local folder raises `TokenizerFileError`.

    Other failures (a hub id that cannot be reached, a folder without tokenizer files)
    are raised as transformers raised them.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - looked at below: a damaged file is named, anything else re-raised
        named = tokenizer_file_error(path)
        if named is None:
            raise
        raise named from err
