"""Data: JSONL sources -> content-keyed cache of packed rows -> batches.

`MedKorDataModule` is imported on first use so that the plain modules (cache,
packing, collate) load without Lightning.
"""

from typing import Any

from medkor.data.sources import DataError

__all__ = ["MedKorDataModule", "DataError"]


def __getattr__(name: str) -> Any:
    if name == "MedKorDataModule":
        from medkor.data.datamodule import MedKorDataModule

        return MedKorDataModule
    raise AttributeError(f"module 'medkor.data' has no attribute {name!r}")
