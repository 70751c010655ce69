"""A stand-in `tensorrt` module that exposes exactly the names of one real TensorRT version's Python API.

The tables under tests/fixtures/tensorrt/ were introspected from the real bindings wheels
(scripts/trt_api_snapshot.py). Any class, enum member, method or property that the version lacks raises
AttributeError naming it, so running deqflow's TensorRT code against the stand-in finds a wrong name on a
CPU instead of on a user's GPU. Return values are typed defaults (instances of the returned TensorRT class,
0, True, ""), or what the test scripts through `behaviours` ({"Class.member": value or callable}).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

TABLES = Path(__file__).parent / "fixtures" / "tensorrt"
CLASS_KINDS = ("class", "enum")


class TrtApiError(AttributeError):
    """A name the TensorRT version does not have."""


def read_table(version: str) -> dict[str, tuple[str, str, str]]:
    """{name: (kind, type, overloads)} for a committed API table, e.g. version '11.4'."""
    rows: dict[str, tuple[str, str, str]] = {}
    for line in (TABLES / f"api-{version}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, typ, overloads = (line.split("\t") + ["", "", ""])[:4]
            if kind in CLASS_KINDS or name not in rows:
                rows[name] = (kind, typ, overloads)
    return rows


def check_call(version: str, qualname: str, overloads: str, args: tuple, kwargs: dict) -> None:
    """TrtApiError unless some overload accepts these positional and keyword arguments (by count and name;
    types are not checked). An empty overload list means the signature is unknown: anything goes."""
    if not overloads:
        return
    for overload in overloads.split("|"):
        params = [p for p in overload.split(",") if p]
        names = [p.rstrip("=") for p in params]
        required = {p for p in names[len(args):] if f"{p}=" not in params}
        if len(args) <= len(params) and set(kwargs) <= set(names[len(args):]) and required <= set(kwargs):
            return
    raise TrtApiError(f"TensorRT {version}: {qualname}({overloads.replace('|', ' | ')}) does not accept "
                      f"{len(args)} positional arguments and keywords {sorted(kwargs)}")


class FakeTensorRT(types.ModuleType):
    """The stand-in module; `used` collects every TensorRT name the code touched."""

    def __init__(self, version: str, behaviours: dict[str, Any] | None = None) -> None:
        super().__init__("tensorrt")
        self.table = read_table(version)
        self.behaviours = dict(behaviours or {})
        self.used: set[str] = set()
        self.__version__ = self.table["__version__"][1]
        self._classes: dict[str, type] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.lookup(name, None)

    def lookup(self, qualname: str, owner: Any) -> Any:
        """The value of `qualname` ('Class.member' or a module name) as seen from `owner`."""
        if qualname not in self.table:
            raise TrtApiError(f"TensorRT {self.__version__} has no {qualname}")
        self.used.add(qualname)
        kind, typ, overloads = self.table[qualname]
        if kind in CLASS_KINDS:
            return self.fake_class(qualname)
        if kind in ("enum-member", "class-attr"):
            return EnumValue(qualname)
        if qualname in self.behaviours and kind not in ("method", "function"):
            return self.behaviours[qualname]
        if kind == "property":
            return self.default(typ)
        if kind in ("method", "function"):
            return self.method(qualname, typ, overloads, owner)
        return self.default(typ)

    def method(self, qualname: str, typ: str, overloads: str, owner: Any) -> Callable[..., Any]:
        scripted = self.behaviours.get(qualname)

        def call(*args: Any, **kwargs: Any) -> Any:
            check_call(self.__version__, qualname, overloads, args, kwargs)
            if callable(scripted):
                return scripted(owner, *args, **kwargs) if owner is not None else scripted(*args, **kwargs)
            return scripted if qualname in self.behaviours else self.default(typ)

        return call

    def default(self, typ: str) -> Any:
        base = typ.split("[")[0].strip()
        if base in self.table and self.table[base][0] == "class":
            return self.fake_class(base)()
        return {"bool": True, "int": 0, "float": 0.0, "str": "", "list": []}.get(base)

    def fake_class(self, qualname: str) -> type:
        if qualname not in self._classes:
            self._classes[qualname] = _make_class(self, qualname)
        return self._classes[qualname]


class EnumValue:
    """An enum member or class constant: compares by name, converts to int."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumValue) and other.qualname == self.qualname

    def __hash__(self) -> int:
        return hash(self.qualname)

    def __int__(self) -> int:
        return abs(hash(self.qualname)) % 16

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


def _make_class(trt: FakeTensorRT, qualname: str) -> type:
    """A class whose class- and instance-level attributes are checked against the table."""

    class Meta(type):
        def __getattr__(cls, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return trt.lookup(f"{qualname}.{name}", None)

        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            init = trt.table.get(f"{qualname}.__init__", ("", "", ""))
            check_call(trt.__version__, f"{qualname}.__init__", init[2], args, kwargs)
            return super().__call__(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return trt.lookup(f"{qualname}.{name}", self)

    def __setattr__(self, name: str, value: Any) -> None:
        full = f"{qualname}.{name}"
        if trt.table.get(full, ("", "", ""))[0] != "property":
            raise TrtApiError(f"TensorRT {trt.__version__} has no settable property {full}")
        trt.used.add(full)
        object.__setattr__(self, name, value)

    return Meta(qualname.rsplit(".", 1)[-1], (), {"__init__": __init__, "__getattr__": __getattr__,
                                                   "__setattr__": __setattr__})
