#!/usr/bin/env python3
"""Compares the compiled sm90 kernels of two builds, kernel by kernel, without a GPU.

    scripts/kernel_diff.py OLD_BUILD NEW_BUILD [--json OUT] [--rename 'REGEX=>REPLACEMENT' ...]

Each build folder's libflashlane.a is read with cuobjdump: per kernel (mangled name) the
resource usage (registers, spill stores and loads, stack frame, shared memory) and the SASS.
The SASS is compared as an opcode sequence (addresses, registers' names and constant-bank offsets
stripped), so a change of parameter-struct layout shows as "operands only" while a change of
the instruction stream shows as the number of opcodes inserted, deleted or replaced. Kernels
present in only one build are listed. Kernels are matched by demangled name; --rename rewrites
the OLD build's names first (Python regex syntax), for a type that was renamed between the two.
Exit status 0 always: this reports, the reader judges.
"""
import argparse
import difflib
import json
import os
import re
import subprocess
import sys
from collections import OrderedDict


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def resource_usage(lib):
    """{kernel: {REG, STACK, SHARED, LOCAL, spill_stores, spill_loads}} from cuobjdump."""
    out = run(["cuobjdump", "--dump-resource-usage", lib])
    usage = {}
    current = None
    for line in out.splitlines():
        m = re.search(r"Function (\S+):", line)
        if m:
            current = m.group(1)
            usage[current] = {}
            continue
        if current and "REG:" in line:
            for key, val in re.findall(r"(\w+):(\d+)", line):
                usage[current][key] = int(val)
    return usage


def sass(lib):
    """{kernel: [normalized instruction, ...]} from cuobjdump --dump-sass."""
    out = run(["cuobjdump", "--dump-sass", lib])
    kernels = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            kernels[current] = []
            continue
        if current is None:
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if not m:
            continue
        kernels[current].append(m.group(1).strip())
    return kernels


def demangle(names):
    names = list(names)
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names), check=True, capture_output=True,
                         text=True).stdout.splitlines()
    return dict(zip(names, out))


def rekey(table, renames):
    """{mangled: v} -> {demangled and renamed: v}."""
    names = demangle(table.keys())
    out = {}
    for mangled, v in table.items():
        n = names[mangled]
        for pat, rep in renames:
            n = re.sub(pat, rep, n)
        out[n] = v
    return out


def opcode(instr):
    # "@!P0 BRA 0x1230" -> "@P BRA"; keeps predication shape and the opcode with its modifiers.
    parts = instr.split()
    pred = ""
    if parts and parts[0].startswith("@"):
        pred = "@P "
        parts = parts[1:]
    return pred + (parts[0] if parts else "")


def operands_normalized(instr):
    s = re.sub(r"c\[0x[0-9a-f]+\]\[0x[0-9a-f]+\]", "c[]", instr)
    s = re.sub(r"0x[0-9a-f]+", "IMM", s)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--json", help="write the per-kernel table as JSON here")
    ap.add_argument("--filter", default="sm90", help="only kernels whose name contains this")
    ap.add_argument("--rename", action="append", default=[],
                    help="REGEX=>REPLACEMENT applied to the old build's demangled kernel names")
    args = ap.parse_args()
    renames = [tuple(r.split("=>", 1)) for r in args.rename]
    libs = [os.path.join(d, "libflashlane.a") if os.path.isdir(d) else d for d in (args.old, args.new)]
    use = [rekey(resource_usage(l), renames if i == 0 else []) for i, l in enumerate(libs)]
    code = [rekey(sass(l), renames if i == 0 else []) for i, l in enumerate(libs)]
    names = sorted(set(code[0]) | set(code[1]))
    names = [n for n in names if args.filter in n]
    rows = []
    for n in names:
        a, b = code[0].get(n), code[1].get(n)
        row = OrderedDict(kernel=n)
        if a is None or b is None:
            row["status"] = "only in " + ("new" if a is None else "old")
            rows.append(row)
            continue
        ua, ub = use[0].get(n, {}), use[1].get(n, {})
        row["regs"] = [ua.get("REG"), ub.get("REG")]
        row["stack"] = [ua.get("STACK"), ub.get("STACK")]
        row["shared"] = [ua.get("SHARED"), ub.get("SHARED")]
        row["local"] = [ua.get("LOCAL"), ub.get("LOCAL")]
        row["instructions"] = [len(a), len(b)]
        if a == b:
            row["status"] = "identical"
        else:
            oa, ob = [opcode(i) for i in a], [opcode(i) for i in b]
            if oa == ob:
                na = [operands_normalized(i) for i in a]
                nb = [operands_normalized(i) for i in b]
                row["status"] = "same opcodes, operands differ" + (
                    " (constants/immediates only)" if na == nb else "")
                row["operand_lines_differing"] = sum(x != y for x, y in zip(a, b))
            else:
                sm = difflib.SequenceMatcher(a=oa, b=ob, autojunk=False)
                changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in sm.get_opcodes()
                              if tag != "equal")
                row["status"] = "opcodes differ"
                row["opcodes_changed"] = changed
                row["opcode_similarity"] = round(sm.ratio(), 4)
        rows.append(row)
    def short(n):
        # "void flashlane::sm90::bwd::bwd_kernel<...Traits<128, 128, cutlass::half_t> >(...)"
        n = re.sub(r"^void ", "", n)
        n = re.sub(r"\(.*\)$", "", n)
        n = n.replace("flashlane::sm90::", "").replace("cutlass::", "")
        return (n[:90] + "...") if len(n) > 93 else n
    print(f"{'kernel':<96} {'regs':>9} {'stack':>9} {'instr':>13}  status")
    for r in rows:
        if "regs" not in r:
            print(f"{short(r['kernel']):<96} {'':>9} {'':>9} {'':>13}  {r['status']}")
            continue
        regs = "{}->{}".format(*r["regs"])
        stack = "{}->{}".format(*r["stack"])
        instr = "{}->{}".format(*r["instructions"])
        extra = ""
        if "opcodes_changed" in r:
            extra = f" ({r['opcodes_changed']} opcodes, similarity {r['opcode_similarity']})"
        print(f"{short(r['kernel']):<96} {regs:>9} {stack:>9} {instr:>13}  {r['status']}{extra}")
    counts = {}
    for r in rows:
        key = r["status"].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    print("summary: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
