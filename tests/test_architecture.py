"""The package's shape: no import cycles among lorastudy modules (function-level imports included), modules of
one concept and a few hundred lines, one module spelling the output tree's names, and no pointer at files the
repository does not have."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "lorastudy"
MAX_LINES = 400
# Longer on purpose; each with why.
LONG_MODULES: dict[str, str] = {}  # module -> why it may pass MAX_LINES (none today)
# Function-level imports of lorastudy modules, allowed where a cheap process must not pay for torch.
LAZY_LORASTUDY_IMPORTS = {
    "cli.py": "each subcommand imports its module when it runs, so `--help` and `--dry-run` start without torch",
    "engine/sweep.py": "the sweep process runs notebooks; only profiles with released checkpoints evaluate in it",
    "perf/check.py": "the FSDP dry run needs accelerate; `lorastudy check` on a CPU profile never does",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported lorastudy module, line, at module level?) for every import in the file, in functions too.
    `from pkg import name` counts as importing pkg.name when that is a module, else pkg."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # never executed: annotations only
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names if a.name.startswith("lorastudy"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("lorastudy"):
                for a in child.names:
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in MODULES else child.module, child.lineno, top))
            visit(child, inner)

    visit(tree, True)
    return found


def graph() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_function_level_imports_are_seen(tmp_path: Path) -> None:
    path = PACKAGE / "cli.py"
    lazy = [m for m, _, top in imports(path) if not top]
    assert "lorastudy.engine.sweep" in lazy  # cmd_sweep imports it inside the function


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_lorastudy_modules_are_imported_at_module_level() -> None:
    """A function-level import of our own module hides a dependency (and often a cycle); only the
    listed modules keep them, for start-up time."""
    lazy = sorted(f"{path.relative_to(PACKAGE)}:{line} imports {m}" for name, path in MODULES.items()
                  for m, line, top in imports(path)
                  if not top and str(path.relative_to(PACKAGE)) not in LAZY_LORASTUDY_IMPORTS)
    assert not lazy, "\n".join(lazy)


def test_function_level_third_party_imports_say_why() -> None:
    """Optional or heavy dependencies may be imported in a function, with a one-line reason beside it."""
    missing = []
    for path in MODULES.values():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    name = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                    if name and not name.startswith("lorastudy"):
                        j = inner.lineno - 1  # the import, and the block of imports and comments just above it
                        block = [lines[j]]
                        while j > 0 and lines[j - 1].strip().startswith(("from ", "import ", "#")):
                            j -= 1
                            block.append(lines[j])
                        if not any("#" in ln for ln in block):
                            missing.append(f"{path.relative_to(PACKAGE)}:{inner.lineno} {name}")
    assert not sorted(set(missing)), "function-level imports without a reason:\n" + "\n".join(sorted(set(missing)))


@pytest.mark.parametrize("name", sorted(MODULES), ids=lambda n: n.removeprefix("lorastudy."))
def test_modules_stay_small(name: str) -> None:
    path = MODULES[name]
    n = len(path.read_text().splitlines())
    if str(path.relative_to(PACKAGE)) in LONG_MODULES:
        return
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by concept"


# a path built from one of the output tree's names: `x / "train.json"`, `x / "checkpoints" / label`
OUTPUT_PATH = re.compile(r"""/\s*f?["'](train\.json|results\.json|failed\.json|checkpoint\.json|eval\.json"""
                         r"""|results\.csv|checkpoints|analyses|book_src|released|trainer|cache|runs)["'/]""")


def test_the_output_path_pattern_catches_paths_not_keys() -> None:
    assert OUTPUT_PATH.search('d / "train.json"') and OUTPUT_PATH.search('out / "runs" / run_id')
    assert not OUTPUT_PATH.search('summary["checkpoints"]') and not OUTPUT_PATH.search('desc="runs"')


def test_only_layout_spells_the_output_tree() -> None:
    offenders = []
    for path in MODULES.values():
        if path.name in ("layout.py", "book.py"):  # book.py spells the book's own source tree, not the output's
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if OUTPUT_PATH.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, "output paths spelled outside lorastudy.layout:\n" + "\n".join(offenders)


def _texts() -> list[tuple[Path, str]]:
    files = [*SRC.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "configs").rglob("*.yaml"),
             *(ROOT / "book").glob("*.md"), ROOT / "README.md", ROOT / "Makefile"]
    out = [(p, p.read_text()) for p in files if p.name != Path(__file__).name]
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        out.append((nb, "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells)))
    return out


def test_nothing_points_outside_the_repository() -> None:
    pattern = re.compile(r"DESIGN\.md|PAPER\.md|shared/paper")
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, text in _texts() for m in pattern.finditer(text)]
    assert not hits, "\n".join(hits)


def test_readme_layout_maps_the_package() -> None:
    """The README's package map names every top-level module and package, and only modules that exist."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    have = {str(p.relative_to(PACKAGE)) for p in MODULES.values() if p.name != "__init__.py"}
    named = set(re.findall(r"\b([a-z_]+(?:/[a-z_]+)*\.py)\b", section))
    top = {p for p in have if "/" not in p} | {f"{p.parent.name}/" for p in PACKAGE.glob("*/__init__.py")}
    missing = [t for t in sorted(top) if t not in section]
    assert not missing, f"top-level modules or packages missing from the README's map: {missing}"
    unknown = sorted(n for n in named if n not in have and not any(h.endswith("/" + n) for h in have))
    assert not unknown, f"the README's map names modules that do not exist: {unknown}"


# The layers, lowest first: a module imports its own layer or lower ones only. A top-level module is `core`.
LAYERS = ["core", "data", "train", "evaluation", "engine", "perf", "analysis", "figures", "publish", "cli"]
# Imports that go up a layer, each with why (importer -> imported).
UPWARD_ALLOWED = {
    ("lorastudy.config", "lorastudy.data.world.settings"): "a profile embeds the generated world's settings model",
    ("lorastudy.results", "lorastudy.train.base"): "each row names its base; stale runs are those of other weights",
    ("lorastudy.train.base", "lorastudy.evaluation.choice"): "a built base records its own validation probes",
    ("lorastudy.evaluation.released", "lorastudy.perf.estimate"): "the released checkpoints' plan is sized first",
    ("lorastudy.evaluation.released", "lorastudy.perf.memory_model"): "as above: the paper's memory model",
    ("lorastudy.engine.sweep", "lorastudy.analysis.claims"): "a sweep ends by writing claims.csv (lazily imported)",
    ("lorastudy.analysis.chapter", "lorastudy.figures.style"): "a chapter notebook's one entry point sets the style",
    ("lorastudy.analysis.chapter", "lorastudy.publish.snapshot"): "and checks the snapshot's inputs it reads",
}
TOP_LEVEL_MAX = 12  # modules at the package's top, besides its packages


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "lorastudy.cli":
        return "cli"
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def upward_imports() -> list[str]:
    found = []
    for name, path in MODULES.items():
        for imported, line, _ in imports(path):
            if imported in MODULES and LAYERS.index(layer(imported)) > LAYERS.index(layer(name)) \
                    and (name, imported) not in UPWARD_ALLOWED:
                found.append(f"{path.relative_to(PACKAGE)}:{line} ({layer(name)}) imports {imported} ({layer(imported)})")
    return found


def test_every_package_is_a_layer() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(LAYERS), f"packages outside the layer order: {sorted(packages - set(LAYERS))}"


def test_lower_layers_never_import_higher_ones() -> None:
    assert not upward_imports(), "\n".join(upward_imports())


def test_every_allowed_upward_import_still_exists() -> None:
    edges = {(name, imported) for name, path in MODULES.items() for imported, _, _ in imports(path)}
    assert not set(UPWARD_ALLOWED) - edges, f"stale allow-list entries: {sorted(set(UPWARD_ALLOWED) - edges)}"


def test_the_layer_rule_catches_a_planted_upward_import(monkeypatch: pytest.MonkeyPatch) -> None:
    real = imports

    def planted(path: Path) -> list[tuple[str, int, bool]]:
        extra = [("lorastudy.publish.book", 1, True)] if path == MODULES["lorastudy.plan"] else []
        return real(path) + extra

    monkeypatch.setitem(globals(), "imports", planted)
    assert any("plan.py:1 (core) imports lorastudy.publish.book" in f for f in upward_imports())


def test_no_module_imports_another_modules_private_names() -> None:
    private = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lorastudy"):
                private += [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.module}.{a.name}"
                            for a in node.names if a.name.startswith("_")]
    assert not private, "\n".join(private)


def test_the_top_level_stays_small() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= TOP_LEVEL_MAX, f"{len(top)} top-level modules: {top}"
