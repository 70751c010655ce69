"""The layering of the four packages, read from their source: a DAG that follows the data. `deqflow` (the shared
core) <- `training`; `deqflow` <- `runtime`; `export` builds on `training` and verifies with `runtime`.

- importing `deqflow` or any `runtime` module loads no module of `export` or `training`;
- `training.deq.config` and every `runtime` module import where torch cannot be imported;
- the import graph points one way (ALLOWED) and has no cycle. It is read from every import statement
  (function-level ones included) and from the `importlib` string tables: a module-level table of module
  names in a module that uses importlib (the CLI's verb table, the backend table, a package's lazy names) is
  an edge from that module to each module it names, and from every module that imports the table by name;
- no `deqflow` verb is implemented in a package below one that it reaches when it runs (through imports and
  tables: e.g. a training verb that looks up a runtime verb in the CLI's table and runs it);
- no function is longer than 60 lines;
- no block of six or more lines is repeated between modules (verbatim once comments, blank lines, imports and
  white space are set aside).
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import subprocess
import sys
import tokenize
from collections import defaultdict
from functools import cache
from pathlib import Path

from helpers import ROOT, blocking_prelude, subprocess_env

PACKAGES = ("deqflow", "training", "export", "runtime")
ALLOWED = {"deqflow": {"deqflow"}, "training": {"deqflow", "training"}, "runtime": {"deqflow", "runtime"},
           "export": {"deqflow", "training", "runtime", "export"}}
"""package -> the packages its modules may import."""
LAZY_EXCEPTIONS = {("runtime.backends.torch_backend", "training")}
"""(module, package) edges allowed beyond ALLOWED: the torch backend loads a checkpoint with training, lazily."""
ENTRY_POINT = ("deqflow.cli", "COMMANDS")
"""The command line's verb table: it names a verb of every package (its own edges are the dispatch itself)."""
MAX_FUNCTION_LINES = 60
MIN_REPEATED_LINES = 6


# --- reading the packages ----------------------------------------------------------------------------------


@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def syntax_tree(name: str) -> ast.Module:
    return _parse(modules()[name])


def _resolve(module: str, level: int, importer: str) -> str:
    """The absolute name of a (possibly relative) `from` import's module."""
    if level == 0:
        return module
    base = importer.split(".") if modules()[importer].name == "__init__.py" else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _known(name: str) -> str | None:
    """`name` or its longest prefix that is a module of the four packages."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules():
            return ".".join(parts[:end])
    return None


def imports_of(name: str) -> set[str]:
    """Modules of the four packages that `name` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(syntax_tree(name)):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, name)
            for alias in node.names:  # `from pkg import module` imports the module itself
                found.add(_known(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules() else _known(base))
    return found - {None, name}


# --- importlib string tables ---------------------------------------------------------------------------------


def _uses_importlib(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.Import) and any(a.name == "importlib" for a in node.names)
               or isinstance(node, ast.ImportFrom) and node.module == "importlib" for node in ast.walk(tree))


def _named_module(text: str, owner: str) -> str | None:
    """The module a table string names: 'pkg.module' or 'pkg.module:Attr', or a submodule's name relative to
    the package `owner` (a package's lazy-name table); None for any other string."""
    name = text.split(":")[0]
    if name in modules():
        return name
    if modules()[owner].name == "__init__.py" and f"{owner}.{name}" in modules():
        return f"{owner}.{name}"
    return None


def string_tables(name: str) -> dict[str, list[str]]:
    """The importlib string tables of module `name`: module-level variable -> the modules its strings name."""
    tree = syntax_tree(name)
    if not _uses_importlib(tree):
        return {}
    tables = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) and node.value is not None else []
        value = getattr(node, "value", None)
        values = value.values if isinstance(value, ast.Dict) else [value] if value is not None else []  # not keys
        named = sorted({m for v in values for c in ast.walk(v) if isinstance(c, ast.Constant)
                        and isinstance(c.value, str) for m in [_named_module(c.value, name)] if m} - {name})
        for target in targets:
            if isinstance(target, ast.Name) and named:
                tables[target.id] = named
    return tables


def table_edges(name: str) -> dict[str, str]:
    """target module -> the table that makes `name` depend on it: the tables `name` holds (except the entry
    point's verb table, which is the dispatch itself) and those it imports by name from another module."""
    out = {}
    for table, targets in string_tables(name).items():
        if (name, table) != ENTRY_POINT:
            out.update({t: f"{name}.{table}" for t in targets})
    for node in ast.walk(syntax_tree(name)):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(node.module or "", node.level, name)
            if source in modules() and source != name:
                tables = string_tables(source)
                for alias in node.names:
                    out.update({t: f"{source}.{alias.name}" for t in tables.get(alias.name, ())})
    out.pop(name, None)
    return out


def dependencies(name: str) -> dict[str, str]:
    """Every module `name` depends on -> how ('import' or the table that names it)."""
    return {**{t: "import" for t in imports_of(name)}, **table_edges(name)}


def verb_modules() -> dict[str, str]:
    """The CLI's verbs: name -> module, read from the source of its verb table."""
    module, table = ENTRY_POINT
    for node in syntax_tree(module).body:
        target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0] \
            if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id == table and isinstance(node.value, ast.Dict):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError(f"no verb table {table} in {module}")


def import_cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph = {name: sorted(dependencies(name)) for name in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(cycles)


def long_functions() -> list[str]:
    """`file:line name (N lines)` for every function or method longer than MAX_FUNCTION_LINES (docstring
    included, decorators not)."""
    out = []
    for name, path in modules().items():
        for node in ast.walk(syntax_tree(name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return sorted(out)


# --- repeated blocks ---------------------------------------------------------------------------------------

_SKIPPED_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                   tokenize.ENDMARKER, tokenize.ENCODING}


def normalised_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that count: comments, blank lines, import statements and lines of lone
    punctuation dropped, white space folded (tokens joined by one space)."""
    lines: dict[int, list[str]] = defaultdict(list)
    statement: list[tokenize.TokenInfo] = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type in _SKIPPED_TOKENS:
            if tok.type == tokenize.NEWLINE and statement:
                if statement[0].string not in ("import", "from"):
                    for t in statement:
                        lines[t.start[0]].append(t.string)
                statement = []
            continue
        statement.append(tok)
    return [(n, " ".join(toks)) for n, toks in sorted(lines.items())
            if any(t[:1].isalnum() or t[:1] in "_'\"" for t in toks)]


def repeated_blocks(size: int = MIN_REPEATED_LINES) -> list[str]:
    """`a.py:10-15 ~ b.py:40-45` for every run of >= `size` normalised lines that stands in two modules
    (overlapping windows of one pair of places merged into one run)."""
    windows: dict[bytes, list[tuple[str, int, int]]] = defaultdict(list)
    for name, path in modules().items():
        lines = normalised_lines(path)
        for i in range(len(lines) - size + 1):
            key = hashlib.blake2b("\n".join(t for _, t in lines[i:i + size]).encode(), digest_size=16).digest()
            windows[key].append((name, lines[i][0], lines[i + size - 1][0]))
    runs: dict[tuple[str, str], list[list[int]]] = defaultdict(list)  # (a, b) -> [a_start, a_end, b_start, b_end]
    for places in windows.values():
        for i, (a, a0, a1) in enumerate(places):
            for b, b0, b1 in places[i + 1:]:
                if a == b:
                    continue
                pair_runs = runs[(a, b)]
                last = pair_runs[-1] if pair_runs else None
                if last and a0 <= last[1] + 1 and b0 <= last[3] + 1 and a0 >= last[0] and b0 >= last[2]:
                    last[1], last[3] = max(last[1], a1), max(last[3], b1)
                else:
                    pair_runs.append([a0, a1, b0, b1])
    rel = {name: path.relative_to(ROOT) for name, path in modules().items()}
    return sorted(f"{rel[a]}:{r[0]}-{r[1]} ~ {rel[b]}:{r[2]}-{r[3]}"
                  for (a, b), pair_runs in runs.items() for r in pair_runs)


# --- the checks --------------------------------------------------------------------------------------------

LOADED = """
import importlib, json, pkgutil, sys
names = []
for package in PACKAGES:
    pkg = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        if not info.name.endswith("__main__"):  # deqflow.__main__ runs the command line
            importlib.import_module(info.name)
            names.append(info.name)
print(json.dumps({"imported": names, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)}))
"""


def _loaded_after_importing(packages: tuple[str, ...], forbidden: tuple[str, ...], block: tuple[str, ...] = ()):
    """In a fresh interpreter: import every module of `packages`; which modules of `forbidden` got loaded."""
    code = (blocking_prelude(*block) if block else "") + f"PACKAGES = {packages!r}\nFORBIDDEN = {forbidden!r}\n"
    code += LOADED
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["imported"]) > 1
    return result["loaded"]


def test_deqflow_loads_nothing_of_export_or_training():
    assert _loaded_after_importing(("deqflow",), ("export", "training")) == []


def test_runtime_loads_nothing_of_export_or_training():
    assert _loaded_after_importing(("runtime",), ("export", "training")) == []


def test_runtime_imports_where_torch_cannot_be_imported():
    assert _loaded_after_importing(("deqflow", "runtime"), ("torch",), block=("torch",)) == []


def test_deq_config_imports_where_torch_cannot_be_imported():
    code = blocking_prelude("torch") + "import training.deq.config\nprint('ok')\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_import_graph_is_read():
    """Guards the checks below against reading nothing: known edges of today's layering are found."""
    assert {"deqflow", "training", "export", "runtime", "deqflow.cli"} <= set(modules())
    assert "deqflow.errors" in imports_of("deqflow.padding")
    assert any(m.startswith("training.") for m in imports_of("export.exporter"))
    assert "runtime.backends.onnxruntime_sessions" in imports_of("export.exporter")
    assert "runtime.warm_start" in imports_of("runtime.pipeline") and "deqflow.host_solver" in imports_of("runtime")
    assert string_tables("runtime.backends")["BACKENDS"] == [
        "runtime.backends.onnxruntime_backend", "runtime.backends.tensorrt_backend", "runtime.backends.torch_backend"]
    assert dependencies("runtime")["runtime.backends.torch_backend"] == "runtime.backends.BACKENDS"
    assert dependencies("training.deq")["training.deq.solvers"] == "training.deq._EXPORTS"
    verbs = verb_modules()
    assert verbs["demo"] == "runtime.commands.demo" and verbs["infer"] == "runtime.commands.infer"
    assert sorted(string_tables("deqflow.cli")["COMMANDS"]) == sorted(set(verbs.values()))


def _allowed(source: str, target: str) -> bool:
    package, dest = source.split(".")[0], target.split(".")[0]
    return dest in ALLOWED[package] or (source, dest) in LAZY_EXCEPTIONS


def layering_violations() -> list[str]:
    """Imports and table edges against ALLOWED (deqflow <- training, deqflow <- runtime, export on both)."""
    return [f"{name} -> {target}" + ("" if how == "import" else f" (through {how})")
            for name in modules() for target, how in sorted(dependencies(name).items())
            if not _allowed(name, target)]


def reach(name: str) -> set[str]:
    """The modules `name` runs when it runs, through imports and tables (the lazy exceptions not followed:
    the torch backend's checkpoint loading is not a dispatch)."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        for target in dependencies(current):
            if target not in seen and (current, target.split(".")[0]) not in LAZY_EXCEPTIONS:
                seen.add(target)
                todo.append(target)
    return seen - {name}


def verb_dispatch_violations() -> list[str]:
    """'verb V (module, package) reaches P: modules' for each verb that reaches a package it may not use."""
    out = []
    for verb, module in verb_modules().items():
        package = module.split(".")[0]
        above = defaultdict(list)
        for target in sorted(reach(module)):
            if target.split(".")[0] not in ALLOWED[package]:
                above[target.split(".")[0]].append(target)
        out += [f"verb {verb} ({module}, {package}) reaches {dest}: {', '.join(targets)}"
                for dest, targets in sorted(above.items())]
    return out


def test_imports_point_one_way():
    assert layering_violations() == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_no_verb_dispatches_above_its_layer():
    assert verb_dispatch_violations() == []


FAKE_TREE = {
    "deqflow/__init__.py": "",
    "deqflow/cli.py": "import importlib\nCOMMANDS = {'demo': 'training.commands.demo', "
                      "'infer': 'runtime.commands.infer'}\n",
    "training/__init__.py": "",
    "training/checkpoint.py": "",
    "training/commands/__init__.py": "",
    "training/commands/demo.py": (  # the demo that re-parsed `infer`'s argv before issue 21
        "def run_command(name, argv):\n    import importlib\n\n    from deqflow.cli import COMMANDS\n\n"
        "    module = importlib.import_module(COMMANDS[name])\n    return module.run(argv)\n"),
    "runtime/__init__.py": "",
    "runtime/commands/__init__.py": "",
    "runtime/commands/infer.py": "def run(args):\n    from runtime.backends import backend_class\n",
    "runtime/backends/__init__.py": "import importlib\n"
                                    "BACKENDS = {'torch': 'runtime.backends.torch_backend:TorchBackend'}\n",
    "runtime/backends/torch_backend.py": "def load():\n    from training.checkpoint import load_model\n",
}


def test_the_dispatch_check_finds_a_verb_that_climbs(tmp_path, monkeypatch):
    """A training verb that looks up a runtime verb in the CLI's table and runs it is reported, by the layering
    check and by the verb check, although no import statement names runtime; the runtime verb that reaches
    training only through the torch backend's checkpoint loading is not."""
    fake = {}
    for rel, text in FAKE_TREE.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = Path(rel).with_suffix("").parts
        fake[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: fake)
    assert layering_violations() == ["training.commands.demo -> runtime.commands.infer (through deqflow.cli.COMMANDS)"]
    assert verb_dispatch_violations() == [
        "verb demo (training.commands.demo, training) reaches runtime: runtime.backends, "
        "runtime.backends.torch_backend, runtime.commands.infer"]


def test_no_function_is_longer_than_60_lines():
    assert long_functions() == []


def test_no_block_of_six_lines_is_repeated_between_modules():
    assert repeated_blocks() == []


def test_the_repeat_check_finds_a_repeat(tmp_path, monkeypatch):
    """The window check itself: a six-line run shared by two files is found, with its line ranges, whatever
    the comments, blank lines, imports and indentation between; five shared lines are not."""
    body = ["total = 0", "for item in items:", "    total += item.size", "    if total > limit:",
            "        raise ValueError(total)", "return total"]
    a = ["import os", "def f(items, limit):", *("    " + line for line in body)]
    b = ["def g(items, limit):", "    # the same, commented",
         *("    " + line.replace("  ", "    ") for line in body[:3]), "", "    from math import tau",
         *("    " + line for line in body[3:])]
    (tmp_path / "a.py").write_text("\n".join(a) + "\n")
    (tmp_path / "b.py").write_text("\n".join(b) + "\n")
    c = ["def h(items, limit):", *("    " + line for line in body[:5]), "    return None"]
    (tmp_path / "c.py").write_text("\n".join(c) + "\n")
    fake = {"a": tmp_path / "a.py", "b": tmp_path / "b.py", "c": tmp_path / "c.py"}
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: fake)
    assert repeated_blocks() == ["a.py:3-8 ~ b.py:3-10"]


def long_script_functions() -> list[str]:
    """long_functions' report for scripts/*.py, which the 60-line rule covers too."""
    out = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_function_in_scripts_is_longer_than_60_lines():
    assert long_script_functions() == []


def test_scripts_use_the_installed_packages_instead_of_editing_sys_path():
    """A script imports deqflow, training, export and runtime as installed (pip install -e .), not by putting
    the checkout on sys.path (trt_api_snapshot.py may add the TensorRT installation it is asked to read)."""
    edits = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "scripts").glob("*.py"))
             if path.name != "trt_api_snapshot.py"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if "sys.path.insert(" in line or "sys.path.append(" in line]
    assert edits == []
