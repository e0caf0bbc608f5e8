#!/usr/bin/env python3
"""Helpers of benches/run.sh (standard library only).

  report.py pgbench VARIANT CLIENTS STDOUT_FILE LOG_DIR   -> one JSON line
  report.py report RESULTS.jsonl MACHINE.json OUT.json OUT.md
  report.py webhooks RESULTS.jsonl OUT.md REV ROUNDS APPENDS_1 APPENDS_N GAP_MS LOAD SIDECAR_ARGS
"""

import glob
import json
import re
import statistics
import sys


def pgbench(variant, clients, stdout_file, log_dir):
    """Parses pgbench's summary and per-transaction logs (-l) into a result line."""
    out = open(stdout_file).read()
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    lat = []
    for f in glob.glob(f"{log_dir}/pgbench_log.*"):
        for line in open(f):
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]) / 1000.0)  # µs -> ms
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(len(lat) * p))], 3) if lat else None
    r = {
        "scenario": "sql",
        "variant": f"{variant}-{clients}c",
        "target": "ours-sql",
        "clients": int(clients),
        "throughput": float(tps.group(1)) if tps else None,
        "unit": "tx/s",
        "errors": int(failed.group(1)) if failed else 0,
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "max_ms": round(lat[-1], 3) if lat else None,
        "samples": len(lat),
    }
    if not tps:
        r["error"] = " ".join(l for l in out.splitlines() if "error" in l)[:300] or "no tps in pgbench output"
    return r


TARGETS = ["ours", "upstream-rust", "node-mem", "node-file"]
REFERENCES = TARGETS[1:]

# What the table shows per scenario: (field, label, better).
METRICS = {
    "append": [("throughput", "appends/s", "higher"), ("p50_ms", "p50 ms", "lower"),
               ("p99_ms", "p99 ms", "lower"), ("max_ms", "max ms", "lower"),
               ("server_rss_kb_after", "server RSS after kB", None),
               ("loadgen_cpu_pct", "loadgen CPU %", None)],
    "latency": [("p50_ms", "p50 ms", "lower"), ("p99_ms", "p99 ms", "lower"),
                ("max_ms", "max ms", "lower"), ("delivered", "delivered", None),
                ("expected", "expected", None), ("loadgen_cpu_pct", "loadgen CPU %", None)],
    "catchup": [("throughput", "MiB/s", "higher"), ("read_p50_ms", "read time p50 ms", "lower"),
                ("requests_per_read", "requests per read", None),
                ("fill_mib_per_s", "fill MiB/s (1 MiB appends)", "higher"),
                ("server_rss_kb_after", "server RSS after kB", None),
                ("loadgen_cpu_pct", "loadgen CPU %", None)],
    "fanout": [("connected", "connected", None),
               ("appends_per_s", "appends/s achieved (target 10)", "higher"), ("p50_ms", "delivery p50 ms", "lower"),
               ("p99_ms", "delivery p99 ms", "lower"), ("max_ms", "delivery max ms", "lower"),
               ("delivered", "delivered", None), ("expected", "expected", None),
               ("server_rss_kb_idle", "server RSS idle kB", None),
               ("server_rss_kb_connected", "server RSS connected kB", "lower"),
               ("server_rss_kb_end", "server RSS end kB", None),
               ("loadgen_cpu_pct", "loadgen CPU %", None)],
    "wake": [("all_answered_ms", "all answered ms", "lower"), ("p50_ms", "p50 ms", "lower"),
             ("p99_ms", "p99 ms", "lower"), ("answered_200", "answered 200", None),
             ("answered_before_append", "answered before append", None),
             ("errors", "errors", None), ("server_rss_kb_connected", "server RSS kB", "lower"),
             ("loadgen_cpu_pct", "loadgen CPU %", None)],
}
METRICS["append_producer"] = METRICS["append"]
ORDER = ["append", "append_producer", "latency", "catchup", "fanout", "wake"]


def median(values):
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(values) if values else None


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float) and v != int(v) and abs(v) < 100:
        return f"{v:.2f}"
    return f"{int(round(v)):,}"


def report(results_file, machine_file, out_json, out_md):
    rows = [json.loads(l) for l in open(results_file) if l.strip()]
    machine = json.load(open(machine_file))
    groups = {}
    for r in rows:
        groups.setdefault((r.get("scenario"), r.get("variant"), r.get("target")), []).append(r)

    summary = []
    for (scenario, variant, target), rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ok = [r for r in rs if "error" not in r]
        fields = sorted({k for r in ok for k, v in r.items() if isinstance(v, (int, float))})
        summary.append({
            "scenario": scenario, "variant": variant, "target": target, "runs": len(rs),
            "failed_runs": len(rs) - len(ok),
            "failures": [r["error"] for r in rs if "error" in r],
            "median": {f: median([r.get(f) for r in ok]) for f in fields},
        })
    json.dump({"machine": machine, "summary": summary, "runs": rows}, open(out_json, "w"), indent=1)

    by = {(s["scenario"], s["variant"], s["target"]): s for s in summary}
    md = ["# Durable Streams benchmarks", ""]
    md.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    md.append("")
    md.append("Medians over runs (runs per cell in parentheses on the first row). `ours` = "
              "ds-sidecar (release) + PostgreSQL 15 (fsync on, synchronous_commit on); "
              "`upstream-rust` = durable-streams 0.1.5 (Rust, durable: group-commit fdatasync); "
              "`node-mem`/`node-file` = @durable-streams/server 0.3.7 in-memory / file-backed. "
              "Ratio = ours / reference (for ms lower is better, for rates higher is better). "
              "Load generator, servers and Postgres share the same cores: see loadgen CPU % (100 = one core).")
    md.append("")
    for scenario in ORDER:
        variants = sorted({v for (s, v, _) in by if s == scenario}, key=lambda v: (len(v), v))
        for variant in variants:
            md.append(f"## {scenario} {variant}")
            md.append("")
            md.append("| metric | " + " | ".join(TARGETS) + " | "
                      + " | ".join(f"ours/{t}" for t in REFERENCES) + " |")
            md.append("|---" * (len(TARGETS) + len(REFERENCES) + 1) + "|")
            cells = {t: by.get((scenario, variant, t)) for t in TARGETS}
            runs = " ".join(f"{t}:{c['runs'] - c['failed_runs']}/{c['runs']}" for t, c in cells.items() if c)
            for i, (field, label, better) in enumerate(METRICS[scenario]):
                vals = [cells[t]["median"].get(field) if cells[t] else None for t in TARGETS]
                ratios = []
                for ref in vals[1:]:
                    if better and vals[0] is not None and ref:
                        ratios.append(f"{vals[0] / ref:.2f}")
                    else:
                        ratios.append("")
                lab = label + (f" (runs {runs})" if i == 0 else "")
                md.append(f"| {lab} | " + " | ".join(fmt(v) for v in vals) + " | " + " | ".join(ratios) + " |")
            for t, c in cells.items():
                for f in (c or {}).get("failures", []):
                    md.append(f"\nFailure ({t}): `{f}`")
            md.append("")

    sql = sorted({v for (s, v, _) in by if s == "sql"})
    if sql:
        md.append("## SQL: ds.append vs plain INSERT (pgbench, same cluster, 100-byte bytea)")
        md.append("")
        md.append("| clients | statement | tx/s | p50 ms | p99 ms | max ms | tx/s vs INSERT |")
        md.append("|---|---|---|---|---|---|---|")
        for clients in sorted({int(by[("sql", v, "ours-sql")]["median"].get("clients") or 0) for v in sql}):
            base = by.get(("sql", f"insert-{clients}c", "ours-sql"))
            base_tps = base["median"].get("throughput") if base else None
            for kind, label in [("append-own", "ds.append, one stream per client"),
                                ("append-one", "ds.append, one shared stream"),
                                ("insert", "INSERT INTO plain table (bigint identity PK, bytea)")]:
                c = by.get(("sql", f"{kind}-{clients}c", "ours-sql"))
                if not c:
                    continue
                m = c["median"]
                ratio = f"{m['throughput'] / base_tps:.2f}" if base_tps and m.get("throughput") else ""
                md.append(f"| {clients} | {label} | {fmt(m.get('throughput'))} | {fmt(m.get('p50_ms'))} | "
                          f"{fmt(m.get('p99_ms'))} | {fmt(m.get('max_ms'))} | {ratio} |")
        md.append("")
    open(out_md, "w").write("\n".join(md) + "\n")


def webhooks(results_file, out_md, rev, rounds, appends_1, appends_n, gap_ms, load, sidecar_args):
    """results/webhooks.md of benches/webhooks.sh: medians over rounds, ours / node."""
    rows = [json.loads(l) for l in open(results_file) if l.strip()]
    by = {}
    for r in rows:
        by.setdefault((r["variant"], r["target"]), []).append(r)
    variants = sorted({v for v, _ in by}, key=lambda v: int(v.removesuffix("sub")))

    def runs(variant, target):
        return [r for r in by.get((variant, target), []) if "error" not in r]

    def med(variant, target, field):
        return median([r.get(field) for r in runs(variant, target)])

    def each(variant, target, field):
        return ", ".join(fmt(r.get(field)) for r in runs(variant, target)) or "–"

    targets = [t for t in ("ours", "ours-base", "node") if any(k[1] == t for k in by)]
    md = ["# Webhook subscriptions: append to webhook (benches/webhooks.sh)", "",
          f"Revision {rev}; ours = release ds-sidecar (`{sidecar_args or 'defaults'}`) + PostgreSQL 15 "
          "(fsync on, synchronous_commit on); node = @durable-streams/server 0.3.7 in-memory "
          "with `webhooks: true`. The receiver is ds-loadgen on 127.0.0.1, answering "
          "`{\"done\": true}` (synchronous auto-ack). Sequential appends to one stream, "
          f"{gap_ms} ms idle before each; latency from sending the POST until the webhook "
          f"(with N subscriptions: all N webhooks) arrived. Medians over {rounds} rounds "
          "(targets alternating in each round; per-round values in brackets). Ratio = ours / node "
          f"(for ms lower is better, for deliveries/s higher); `ours-base`, when present, is "
          f"another sidecar build on the same cluster (an A/B). Load average at the end: {load}.", ""]
    metrics = [("p50_ms", "p50 ms, all webhooks of an append"),
               ("p99_ms", "p99 ms, all webhooks of an append"),
               ("max_ms", "max ms, all webhooks of an append"),
               ("first_p50_ms", "p50 ms, first webhook of an append"),
               ("delivery_p50_ms", "p50 ms, each webhook"),
               ("delivery_p99_ms", "p99 ms, each webhook"),
               ("deliveries_per_s", "deliveries/s"),
               ("append_p50_ms", "p50 ms, the append's own response")]
    for v in variants:
        n = int(v.removesuffix("sub"))
        appends = appends_1 if n == 1 else appends_n
        ratios = [("ours", "node")] + [("ours-base", "node"), ("ours", "ours-base")] * ("ours-base" in targets)
        md += [f"## {n:,} subscription{'s' if n > 1 else ''} on the stream, {appends} appends per round", "",
               "| metric | " + " | ".join(targets) + " | " + " | ".join(f"{a} / {b}" for a, b in ratios) + " |",
               "|---" * (len(targets) + 1) + "|---:" * len(ratios) + "|"]
        for field, label in metrics:
            if n == 1 and field in ("first_p50_ms", "delivery_p50_ms", "delivery_p99_ms"):
                continue
            cells = [f"{fmt(med(v, t, field))} [{each(v, t, field)}]" for t in targets]
            rs = []
            for a, b in ratios:
                x, y = med(v, a, field), med(v, b, field)
                rs.append(f"{x / y:.2f}x" if x is not None and y else "–")
            md.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(rs) + " |")
        for t in targets:
            bad = [r for r in by.get((v, t), []) if "error" in r]
            rs = runs(v, t)
            timeouts = sum(r.get("timeouts", 0) for r in rs)
            extra = sum(r.get("extra_deliveries", 0) for r in rs)
            malformed = sum(r.get("malformed", 0) for r in rs)
            cpu = median([r.get("loadgen_cpu_pct") for r in rs])
            md.append(f"\n{t}: {len(rs)}/{len(rs) + len(bad)} runs, rounds timed out {timeouts}, "
                      f"extra webhooks {extra}, malformed {malformed}, loadgen CPU {fmt(cpu)} %"
                      + "".join(f"; failed: `{r['error']}`" for r in bad))
        md.append("")
    md.append(f"Command: `bash benches/webhooks.sh` (ROUNDS={rounds}, APPENDS_1={appends_1}, "
              f"APPENDS_1000={appends_n}, GAP_MS={gap_ms}).")
    open(out_md, "w").write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    if sys.argv[1] == "pgbench":
        print(json.dumps(pgbench(*sys.argv[2:6])))
    elif sys.argv[1] == "report":
        report(*sys.argv[2:6])
    elif sys.argv[1] == "webhooks":
        webhooks(*sys.argv[2:11])
    else:
        sys.exit(__doc__)
