"""Write the public Python API of a TensorRT bindings wheel (classes, enum members, methods, properties, module
functions, with return types) to a table that `runtime.tensorrt_api` checks deqflow's TensorRT calls against.

TensorRT itself cannot be installed on a machine without NVIDIA's index and a GPU, but its Python bindings
wheel can (`pip install --no-deps --target DIR tensorrt-cu12-bindings==11.4.0.106`). Its extension module
only imports when libnvinfer, libnvonnxparser and libnvinfer_plugin are present; this script compiles inert
stand-ins exporting the few C entry points the module links against (each returns NULL), preloads them, and
introspects the real module. The stand-ins make an API listing possible, not TensorRT: nothing can be built
or run with them.

    python scripts/trt_api_snapshot.py --site DIR --output tests/fixtures/tensorrt/api-11.4.tsv
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import inspect
import re
import subprocess
import sys
import tempfile
from pathlib import Path

STANDIN_LIBS = ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin")
ENTRY_POINTS = ("createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                "createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getBuilderPluginRegistry",
                "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins")
RETURNS = re.compile(r"\)\s*->\s*([\w\.\[\], ]+)")


def compile_standins(major: int, directory: Path) -> list[Path]:
    """Build the three inert shared libraries for TensorRT `major` (sonames libnvinfer.so.<major>, ...)."""
    source = directory / "standin.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in ENTRY_POINTS))
    libs = []
    for lib in STANDIN_LIBS:
        out = directory / f"{lib}.so.{major}"
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{out.name}", "-o", str(out), str(source)],
                       check=True)
        libs.append(out)
    return libs


def bindings_major(site: Path) -> int:
    """TensorRT major version the extension module links against (from its libnvinfer.so.N dependency)."""
    so = next((site / "tensorrt_bindings").glob("tensorrt*.so"))
    needed = subprocess.run(["objdump", "-p", str(so)], capture_output=True, text=True, check=True).stdout
    found = re.search(r"NEEDED\s+libnvinfer\.so\.(\d+)", needed)
    if not found:
        raise SystemExit(f"{so} does not link libnvinfer.so.N: not a TensorRT bindings module")
    return int(found.group(1))


def _clean(text: str) -> str:
    return re.sub(r"\btensorrt(_bindings)?\.(tensorrt\.)?", "", text).strip()


def _split_top(text: str) -> list[str]:
    """Split a parameter list on the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{<"
        depth -= ch in ")]}>"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in [*parts, text[start:]] if p.strip()]


def _signatures(name: str, member) -> tuple[str, str]:
    """(return type, overloads) from pybind11 docstring signatures; overloads as 'a,b=|c' (= marks a default,
    self is left out). ('', '') when the docstring carries no signature."""
    doc = getattr(member, "__doc__", None) or ""
    heads = [line for line in doc.splitlines() if re.match(rf"^(\d+\. )?{re.escape(name)}\(", line)]
    heads = [h for h in heads if "*args, **kwargs" not in h] or heads[:1]
    returns, overloads = "", []
    for head in heads:
        inside = head[head.index("(") + 1:head.rindex(")")] if ")" in head else ""
        params = [p for p in _split_top(inside) if not p.startswith("self")]
        names = [p.split(":")[0].split("=")[0].strip() + ("=" if "=" in p else "") for p in params]
        overloads.append(",".join(names))
        found = RETURNS.search(head)
        returns = returns or (_clean(found.group(1)) if found else "")
    if not heads:  # a plain Python function of the package
        try:
            params = inspect.signature(member).parameters.values()
        except (TypeError, ValueError):
            return "", ""
        overloads = [",".join(p.name + ("=" if p.default is not p.empty else "") for p in params
                              if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))]
    return returns, "|".join(overloads)


def _class_rows(name: str, cls: type) -> list[tuple[str, str, str, str]]:
    members = getattr(cls, "__members__", None)
    rows = [(name, "enum" if isinstance(members, dict) else "class", "", "")]
    for attr in sorted(members or {}):
        rows.append((f"{name}.{attr}", "enum-member", name, ""))
    for attr in sorted(dir(cls)):  # inherited members too (layers share ILayer's)
        if attr.startswith("_") or attr in (members or {}):
            continue
        raw = inspect.getattr_static(cls, attr)
        if inspect.isclass(raw):
            continue  # nested classes get their own rows
        if isinstance(raw, property):
            rows.append((f"{name}.{attr}", "property", _signatures("", raw.fget)[0], ""))
        elif isinstance(raw, (staticmethod, classmethod)) or callable(raw):
            rows.append((f"{name}.{attr}", "method", *_signatures(attr, getattr(cls, attr))))
        else:
            rows.append((f"{name}.{attr}", "class-attr", type(raw).__name__, ""))
    if "__init__" in vars(cls):
        rows.append((f"{name}.__init__", "constructor", "", _signatures("__init__", cls.__init__)[1]))
    return rows


def introspect(module) -> list[tuple[str, str, str, str]]:
    """(name, kind, type, overloads) rows for every public name of the tensorrt module, nested classes too."""
    rows: list[tuple[str, str, str, str]] = [("__version__", "module-attr", module.__version__, "")]
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if inspect.isclass(value):
            rows += _class_rows(name, value)
            for inner in sorted(dir(value)):
                if not inner.startswith("_") and inspect.isclass(getattr(value, inner)):
                    rows += _class_rows(f"{name}.{inner}", getattr(value, inner))
        elif callable(value):
            rows.append((name, "function", *_signatures(name, value)))
        elif not inspect.ismodule(value):
            rows.append((name, "module-attr", type(value).__name__, ""))
    return sorted(set(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--site", type=Path, required=True, help="folder holding the tensorrt_bindings package")
    ap.add_argument("--output", type=Path, required=True, help="table to write (tab-separated)")
    args = ap.parse_args(argv)
    major = bindings_major(args.site)
    with tempfile.TemporaryDirectory() as tmp:
        for lib in compile_standins(major, Path(tmp)):
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)  # the loader then resolves the sonames to these
        sys.path.insert(0, str(args.site))
        module = importlib.import_module("tensorrt_bindings")
    rows = introspect(module)
    header = (f"# Python API of the TensorRT {module.__version__} bindings (tensorrt_bindings), introspected by "
              "scripts/trt_api_snapshot.py\n# name\tkind\ttype (return type of methods/properties/functions)\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(header + "".join("\t".join(r) + "\n" for r in rows))
    print(f"{args.output}: {len(rows)} names of TensorRT {module.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
