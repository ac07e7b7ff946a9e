"""The adversarial figures of docs/reliability.md: how many bad configured values, malformed
data files and well-formed-but-awkward rows tether was fed, and what became of each.

* ``configs``: every field of every config dataclass, with every value its annotation refuses
  (out of range just past each bound, NaN, ±inf, each wrong type; derived as in
  tests/test_config_values.py), loaded from a YAML file: refused with one line naming
  file:line and the field, or not.
* ``readers``: seeded random files of random bytes and random rows (JSONL, JSON, CSV, .txt)
  through the preference, demonstration and prompt readers: a one-line DataError naming the
  file, or a traceback; and well-formed rows whose text holds line separators, quotes,
  brackets or 200,000-character cells, written as other tools write them: read back exactly,
  or lost.

    .venv/bin/python benchmarks/adversarial_inputs.py            # both, about a minute on one core
    .venv/bin/python benchmarks/adversarial_inputs.py readers --files 2000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tether.errors import DataError, TetherError  # noqa: E402

AWKWARD = ["a\u2028b", "x\x85y", "p\u2029q", "tab\x0bvt", "sep\x1crecord", '"quoted", with comma', "[1, 2]",
           '{"a": 1}', "line\nbreak", "cr\rlf", "é ü 中文 🙂", "x" * 200_000]


def configs() -> None:
    from tests.test_config_values import CASES, CONFIGS, bad_values, hint, write_config
    from tether.config import load_config

    outcomes = Counter()
    with tempfile.TemporaryDirectory() as folder:
        for cls, name in CASES:
            for value in bad_values(hint(cls, name)):
                path, line = write_config(Path(folder), cls, name, value)
                try:
                    load_config(cls, path)
                    outcomes["accepted"] += 1
                except TetherError as exc:
                    named = str(exc).startswith(f'{path}:{line}: field "{name}": ') and "\n" not in str(exc)
                    outcomes["one line naming file:line and field" if named else "other message"] += 1
                except Exception as exc:  # noqa: BLE001 - counted: a traceback for the user
                    outcomes[f"traceback ({type(exc).__name__})"] += 1
    print(f"configs: {len(CONFIGS)} classes, {len(CASES)} fields, {sum(outcomes.values())} bad values: {dict(outcomes)}")


def random_row(rng: random.Random):
    keys = ["prompt", "chosen", "rejected", "margin", "responses", "ranking", "completion", "messages", "truncated"]
    values = [None, True, 0, -1, 1.5, float("nan"), "", " ", "text", [], [0, 1], [{"role": "user"}], {"a": 1},
              [{"role": "assistant", "content": "hi"}], ["a", "b", "c"], [2, 0, 1]]
    if rng.random() < 0.1:
        return rng.choice(values)
    return {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 5))}


def readers(files: int, seed: int) -> None:
    from tests.test_reader_fuzz import LOADERS, load_or_data_error, write

    rng = random.Random(seed)
    malformed = Counter()
    with tempfile.TemporaryDirectory() as folder:
        for i in range(files):
            kind, fmt = rng.choice(sorted(LOADERS)), rng.choice(["jsonl", "json", "csv"])
            path = Path(folder) / f"f{i}.{fmt}"
            if rng.random() < 0.3:
                path.write_bytes(rng.randbytes(rng.randint(0, 300)))
            else:
                write(path, fmt, [random_row(rng) for _ in range(rng.randint(1, 6))])
            try:
                result = load_or_data_error(kind, path, skip_bad_rows=rng.random() < 0.5)
                malformed["one-line DataError" if isinstance(result, DataError) else "read"] += 1
            except Exception as exc:  # noqa: BLE001 - counted: a traceback, or a message that is not one line
                malformed[f"other ({type(exc).__name__})"] += 1
        print(f"readers, malformed input: {files} files: {dict(malformed)}")

        rows = kept = 0
        for i in range(files // 10):
            fmt = rng.choice(["jsonl", "json", "csv"])
            triples = {(f"{rng.choice(AWKWARD)} {i}.{j}", rng.choice(AWKWARD), f"{rng.choice(AWKWARD)}!") for j in range(4)}
            records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples if c != r]
            path = write(Path(folder) / f"ok{i}.{fmt}", fmt, records)
            try:
                read = {(p.prompt, p.chosen, p.rejected) for p in LOADERS["preferences"](str(path)).pairs}
            except Exception:  # noqa: BLE001 - a refused or crashed file loses all its rows
                read = set()
            rows += len(records)
            kept += len(read & {(r["prompt"], r["chosen"], r["rejected"]) for r in records})
        print(f"readers, well-formed awkward rows: {rows} rows, {kept} read back exactly, {rows - kept} lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=["configs", "readers", "all"], default="all")
    parser.add_argument("--files", type=int, default=1000, help="random files for the readers (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.what in ("configs", "all"):
        configs()
    if args.what in ("readers", "all"):
        readers(args.files, args.seed)


if __name__ == "__main__":
    main()
