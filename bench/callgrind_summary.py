#!/usr/bin/env python3
"""Summarises one callgrind dump per request, for bench/profile.sh.

Usage: callgrind_summary.py CALLGRIND_OUT REQUESTS

Prints: instructions per request; self cost by component (crate, or libc's allocator and
memcpy); the top functions by self cost and by inclusive cost (Ir per request); and calls
per request of the allocator and copy functions. It reads the file format itself
(callgrind_annotate 3.19 lumps every self cost of a mid-run dump into `clone`).
"""

import re
import sys
from collections import defaultdict

TOP = 35
ALLOC = re.compile(r"^(malloc|free|realloc|calloc|posix_memalign|_int_malloc|_int_free|_int_realloc|malloc_consolidate|cfree)$")
COPY = re.compile(r"^(__)?mem(cpy|move|set|cmp)\S*$")


def component(name):
    if ALLOC.match(name) or name.startswith("_int_") or name in ("tcache_get", "unlink_chunk"):
        return "libc malloc/free"
    if COPY.match(name) or name.startswith("__memcpy") or name.startswith("__memmove"):
        return "libc memcpy/memmove/memset"
    if name.startswith("0x") or "???" in name:
        return "unknown"
    n = name.lstrip("<&*(")
    n = re.sub(r"^(dyn |mut |const )", "", n)
    if n.startswith("core::ptr::drop_in_place"):
        return "drop glue (core::ptr::drop_in_place)"
    seg = n.split("::", 1)[0].split("<", 1)[0].split(" ", 1)[0]
    if "::" not in n:
        return "libc/other (" + seg[:30] + ")" if seg else "other"
    return seg


NAME_RE = re.compile(r"^\((\d+)\)(?: (.*))?$")


def function_id(text, names):
    """The id of a compressed `(id) name` reference, remembering the name on first use."""
    m = NAME_RE.match(text)
    if not m:
        return None
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return m.group(1)


def main():
    path, requests = sys.argv[1], max(int(sys.argv[2]), 1)
    names = {}
    self_cost = defaultdict(int)
    call_cost = defaultdict(int)  # inclusive cost of the calls a function makes
    calls_to = defaultdict(int)
    # (caller, callee) -> [calls, inclusive cost of those calls]
    edges = defaultdict(lambda: [0, 0])
    fn = cfn = None
    after_calls = False
    total = 0
    # Where Ir is on a cost line: after the position columns, among the events (more than Ir
    # with CALLGRIND_ARGS=--cache-sim=yes; trailing zero costs may be left off).
    ir_column = 1
    positions = 1
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            parts = line.split()
            if len(parts) <= ir_column:
                continue
            cost = int(parts[ir_column])
            if after_calls:
                call_cost[fn] += cost
                edges[(fn, cfn)][1] += cost
                after_calls = False
            else:
                self_cost[fn] += cost
                total += cost
            continue
        if line.startswith("positions:"):
            positions = len(line.split()) - 1
            continue
        if line.startswith("events:"):
            ir_column = positions + line.split()[1:].index("Ir")
            continue
        if line.startswith("fn="):
            fn = function_id(line[3:], names) or fn
            continue
        if line.startswith("cfn="):
            cfn = function_id(line[4:], names) or cfn
            continue
        if line.startswith("calls="):
            n = int(line[6:].split()[0])
            calls_to[cfn] += n
            edges[(fn, cfn)][0] += n
            after_calls = True
            continue

    def nm(i):
        return names.get(i, f"({i})")

    print(f"instructions (Ir) in all: {total:,}; per request: {total / requests:,.0f}")
    print()
    comp = defaultdict(int)
    for f, v in self_cost.items():
        comp[component(nm(f))] += v
    print("self cost by component (Ir per request, share):")
    for k, v in sorted(comp.items(), key=lambda kv: (-kv[1], kv[0]))[:20]:
        print(f"  {v / requests:10,.0f}  {100 * v / total:5.1f}%  {k}")
    print()
    print("calls per request of the allocator and copy functions:")
    for f, n in sorted(calls_to.items(), key=lambda kv: (-kv[1], kv[0])):
        name = nm(f)
        if name in ("malloc", "free", "realloc", "calloc", "posix_memalign") or COPY.match(name):
            print(f"  {n / requests:8.1f}  {name}")
    print()
    print("who calls memcpy/memmove, malloc and free (calls and Ir per request, top callers):")
    for pattern in (COPY, re.compile(r"^malloc$"), re.compile(r"^free$")):
        rows = [(nm(a), c, v) for (a, b), (c, v) in edges.items() if pattern.match(nm(b)) and not COPY.match(nm(a))]
        rows.sort(key=lambda r: (-r[2], r[0]))
        for caller, c, v in rows[:12]:
            print(f"  {c / requests:6.1f} calls {v / requests:8,.0f} Ir  {caller[:150]}")
        print()
    print(f"top {TOP} functions by self cost (Ir per request, share):")
    for f, v in sorted(self_cost.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]:
        print(f"  {v / requests:9,.0f}  {100 * v / total:5.1f}%  {nm(f)[:160]}")
    print()
    print(f"top {TOP} functions by inclusive cost, outside the runtime's poll loop (Ir per request):")
    incl = {f: self_cost.get(f, 0) + call_cost.get(f, 0) for f in set(self_cost) | set(call_cost)}
    skip = re.compile(r"^(tokio::runtime|std::|core::ops::function|<std::|clone$|start_thread|\(below main\)|<core::future|<futures_util::future::future::Map|<tokio::|core::future|0x)")
    shown = 0
    for f, v in sorted(incl.items(), key=lambda kv: (-kv[1], kv[0])):
        if skip.match(nm(f)):
            continue
        print(f"  {v / requests:9,.0f}  {100 * v / total:5.1f}%  {nm(f)[:160]}")
        shown += 1
        if shown >= TOP:
            break
    print()
    print("session_proxy's own functions, inclusive (Ir per request):")
    for f, v in sorted(incl.items(), key=lambda kv: (-kv[1], kv[0])):
        if "session_proxy::" in nm(f):
            print(f"  {v / requests:9,.0f}  {100 * v / total:5.1f}%  {nm(f)[:160]}")


if __name__ == "__main__":
    main()
