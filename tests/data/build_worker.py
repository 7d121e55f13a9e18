"""Run one cache build in its own process (for kill and concurrency tests).

usage: python build_worker.py DATA_DIR TOKENIZER_DIR MAX_LENGTH [NUM_PROC [PIECE_BYTES]]
Prints the result summary as one JSON line.
"""

import json
import logging
import sys
from pathlib import Path

from medkor.data.cache import CacheRequest, ensure_cache
from medkor.data.sources import Selection, split_files

logging.basicConfig(level=logging.INFO, format="%(message)s")
data_dir, tokenizer_dir, max_length = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
num_proc = int(sys.argv[4]) if len(sys.argv) > 4 else 1
piece_bytes = {"piece_bytes": int(sys.argv[5])} if len(sys.argv) > 5 else {}
request = CacheRequest(
    split="train",
    selection=Selection(files=split_files(data_dir, "train")),
    data_dir=data_dir,
    cache_dir=data_dir / ".cache",
    tokenizer_path=tokenizer_dir,
    max_length=max_length,
    num_proc=num_proc,
    **piece_bytes,
)
print(json.dumps(ensure_cache(request).summary()), flush=True)
