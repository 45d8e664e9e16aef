"""Cost of checkpoint manifests: checksum throughput on a file the size of the 135M model.

A checkpoint's `COMPLETE` marker holds the size and xxh3-64 of every file
(`spo.train.checkpoint`); writing it reads every file back once, verifying reads it again.
This times `file_digest` (xxh3-64) against zlib.crc32 and hashlib.blake2b, side by side in
one run, on a file of random bytes as large as SmolLM2-135M's bf16 `model.safetensors`
(~270 MB) that sits in the page cache, as a file just written does. The optimizer state of
a full fine-tune (fp32 masters + Adam moments, ~6x the model) costs proportionally more.

    python bench/checkpoint_hash.py        # writes bench/results/checkpoint_hash.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

from common import RESULTS, command, load_avg, machine, write_json

from spo.train.checkpoint import file_digest

CHUNK = 1 << 20


def _stream(path: Path, update) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            update(chunk)


def crc32(path: Path) -> str:
    state = [0]
    _stream(path, lambda b: state.__setitem__(0, zlib.crc32(b, state[0])))
    return f"{state[0]:08x}"


def blake2b(path: Path) -> str:
    h = hashlib.blake2b()
    _stream(path, h.update)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=270.0, help="file size in MB (default 270)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS / "checkpoint_hash.json"))
    args = p.parse_args(argv)
    size = int(args.mb * 1e6)
    load_start = load_avg()
    times: dict[str, list[float]] = {"xxh3_64": [], "crc32": [], "blake2b": []}
    fns = {"xxh3_64": file_digest, "crc32": crc32, "blake2b": blake2b}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        with open(path, "wb") as fh:
            for _ in range(0, size, 1 << 24):
                fh.write(os.urandom(min(1 << 24, size - fh.tell())))
        for fn in fns.values():
            fn(path)  # warm the page cache and the code
        for _ in range(args.reps):  # interleaved, so load changes hit every method alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(path)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "what": "checksum time of a file the size of the 135M model (page cache, median)",
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(
            "platform",
            "cpu_count",
            "python",
            load_avg_1m_at_start=load_start,
            load_avg_1m_at_end=load_avg(),
            note="2-core machine shared with other jobs: absolute times are noisy; "
            "the ratios come from one interleaved run",
        ),
        "bytes": size,
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "gb_per_s": {k: round(size / v / 1e9, 2) for k, v in med.items()},
        "ratio_to_xxh3": {k: round(v / med["xxh3_64"], 2) for k, v in med.items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    write_json(args.out, out)
    print(json.dumps(out["median_seconds"]), json.dumps(out["ratio_to_xxh3"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
