"""``python -m segformer.bench ARGS_JSON``: one step in a fresh process, printing its peak-memory growth
(the child of `segformer.bench.peak_memory_mb`)."""

import json
import sys

from . import _memory_child

print(json.dumps(_memory_child(json.loads(sys.argv[1]))))
