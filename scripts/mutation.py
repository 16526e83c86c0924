"""Mutation score of the core modules (`make mutation`; opt-in, not in CI nor in `make test`).

For each module, mutmut (pinned in the dev extra) mutates that module only and runs that module's own tests
only, in a scratch copy of the project under OUT/<module>/ (default outputs/mutation/), one module after the
other; then it prints, and writes to OUT/summary.md and OUT/summary.json, the kill rate per module: killed
(timeouts included) over every mutant that was generated, so a mutant that no test reaches counts as a survivor.
Each module's surviving mutants are listed in OUT/<module>/survivors.txt (`mutmut show NAME` there shows one).

    .venv/bin/python scripts/mutation.py                    # every module (an hour or more on 2 cores)
    .venv/bin/python scripts/mutation.py io config --jobs 2 # some modules, two mutants at a time
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (short name) -> (source file, the tests that are about it). Tests that start the CLI in a subprocess
# are left out: a subprocess imports the project's own, unmutated, copy.
MODULES: dict[str, tuple[str, list[str]]] = {
    "evaluation.run": ("src/lorastudy/evaluation/run.py", ["tests/test_wiring.py"]),
    "evaluation.math": ("src/lorastudy/evaluation/math.py", ["tests/test_math_eval.py"]),
    "evaluation.choice": ("src/lorastudy/evaluation/choice.py",
                          ["tests/test_choice_and_generate.py", "tests/test_wiring.py"]),
    "evaluation.passk": ("src/lorastudy/evaluation/passk.py",
                         ["tests/test_code_eval.py", "-k", "pass_at_k or unique_count or test_passk", "tests/test_passk.py"]),
    "io": ("src/lorastudy/io.py", ["tests/test_io.py"]),
    "config": ("src/lorastudy/config.py", ["tests/test_config.py"]),
    "results": ("src/lorastudy/results.py", ["tests/test_results.py", "tests/test_snapshot.py"]),
    "analysis.claims": ("src/lorastudy/analysis/claims.py", ["tests/test_claims.py", "tests/test_snapshot.py"]),
}
# what the tests read: the profiles, the committed snapshots, the notebooks
COPY = ["src", "tests", "configs", "results", "notebooks", "pyproject.toml"]
PLACEHOLDER = "tests/test_mutation_placeholder.py"  # stands in where a module has no test file yet


def selection(tests: list[str], root: Path) -> list[str]:
    """The pytest arguments for a module's tests: its test files that exist here (options kept)."""
    files = [t for t in tests if not t.startswith("-") and (root / t.split("::")[0]).is_file()]
    if not files:
        return [PLACEHOLDER]
    out, skip = [], False
    for i, t in enumerate(tests):
        if skip:
            skip = False
            continue
        if t.startswith("-"):
            out += [t, tests[i + 1]]
            skip = True
        elif t in files:
            out.append(t)
    return out


def mutmut_config(source: str, tests: list[str]) -> str:
    quoted = lambda items: "[" + ", ".join(json.dumps(x) for x in items) + "]"  # noqa: E731
    return ("\n[tool.mutmut]\n"
            'source_paths = ["src/"]\n'
            f"only_mutate = {quoted([source])}\n"
            f"pytest_add_cli_args_test_selection = {quoted(tests)}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:randomly"]\n'
            'also_copy = ["configs/", "results/", "notebooks/"]\n'
            'process_isolation = "forkserver"\n')


def prepare(work: Path, source: str, tests: list[str]) -> None:
    """A scratch copy of the project with the module's mutmut settings in its pyproject.toml."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, work / name)
    if tests == [PLACEHOLDER]:
        (work / PLACEHOLDER).write_text('"""No test of this module exists yet: every mutant survives."""\n\n\n'
                                        "def test_nothing() -> None:\n    pass\n")
    with open(work / "pyproject.toml", "a", encoding="utf-8") as fh:
        fh.write(mutmut_config(source, tests))


def statuses(work: Path, env: dict[str, str]) -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    proc = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                          capture_output=True, text=True)
    out = {}
    for line in proc.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name:
            out[name] = status
    return out


KILLED = {"killed", "timeout", "segfault"}  # a segfault or a timeout under a mutant is the tests noticing it
NOT_COUNTED = {"skipped", "caught by type check"}


def measure(name: str, out: Path, jobs: int, env: dict[str, str]) -> dict[str, object]:
    source, wanted = MODULES[name]
    tests = selection(wanted, ROOT)
    work = out / name
    prepare(work, source, tests)
    start = time.perf_counter()
    with open(work / "mutmut.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)], cwd=work,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    status = statuses(work, env)
    counted = {k: v for k, v in status.items() if v not in NOT_COUNTED}
    killed = sum(v in KILLED for v in counted.values())
    survivors = sorted(k for k, v in counted.items() if v not in KILLED)
    (work / "survivors.txt").write_text("".join(f"{k}: {counted[k]}\n" for k in survivors))
    by_status: dict[str, int] = {}
    for v in status.values():
        by_status[v] = by_status.get(v, 0) + 1
    return {"module": name, "source": source, "tests": tests, "mutants": len(counted), "killed": killed,
            "kill_rate": killed / len(counted) if counted else None, "by_status": by_status,
            "minutes": round((time.perf_counter() - start) / 60, 1), "mutmut_exit": proc.returncode}


def report(rows: list[dict[str, object]]) -> str:
    lines = ["| module | mutants | killed | kill rate | not killed | minutes |", "|---|---|---|---|---|---|"]
    for r in rows:
        rate = "n/a" if r["kill_rate"] is None else f"{100 * r['kill_rate']:.1f}%"
        other = ", ".join(f"{n} {s}" for s, n in sorted(r["by_status"].items()) if s not in KILLED) or "-"
        lines.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {rate} | {other} | {r['minutes']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "mutation")
    args = parser.parse_args(argv)
    names = args.modules or list(MODULES)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "LORASTUDY_CACHE": str(args.out / "cache")}
    shared = ROOT.parent / "shared" / "data"
    if shared.is_dir():
        env.setdefault("LORASTUDY_SHARED_DATA", str(shared))
    rows = []
    for name in names:
        print(f"[mutation] {name}: mutating {MODULES[name][0]} ...", flush=True)
        rows.append(measure(name, args.out, args.jobs, env))
        r = rows[-1]
        rate = "n/a" if r["kill_rate"] is None else f"{100 * r['kill_rate']:.1f}%"
        print(f"[mutation] {name}: {r['killed']}/{r['mutants']} killed ({rate}) in {r['minutes']} min", flush=True)
    table = report(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(table + "\n")
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
