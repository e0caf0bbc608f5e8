#!/usr/bin/env python3
"""Checks that every SQL statement the README prints is run by the pg_regress
goldens (tests/pg_regress/sql), word for word, so the examples work as
printed. Comments and whitespace are ignored; statement text is not."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent


def normalise(sql: str) -> str:
    # Drop `--` comments (not inside strings: the README has none there).
    lines = [re.sub(r"\s*--.*$", "", line) for line in sql.splitlines()]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


goldens = " ".join(normalise(p.read_text()) for p in sorted((root / "tests/pg_regress/sql").glob("*.sql")))
readme = (root / "README.md").read_text()
missing = []
for block in re.findall(r"```sql\n(.*?)```", readme, flags=re.S):
    for statement in normalise(block).split(";"):
        statement = statement.strip()
        if statement and statement not in goldens:
            missing.append(statement)
if missing:
    print("README SQL not run by tests/pg_regress/sql (fix one or the other):", file=sys.stderr)
    for s in missing:
        print(f"  {s};", file=sys.stderr)
    sys.exit(1)
print("README SQL: every statement is run by the pg_regress goldens")
