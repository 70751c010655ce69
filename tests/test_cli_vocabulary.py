"""One vocabulary: every verb's parser is built and each option string must mean the same thing (type and its
validation, choices, nargs, action) in every verb that has it. A repeatable form (`append`) of an option counts as
the same meaning as its single form.

`python tests/test_cli_vocabulary.py` prints the option strings with more than one meaning and their count."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

REPEATABLE = {"append": "store"}
"""argparse action names whose meaning is that of another one, given several times."""


def _type_name(kind) -> str | None:
    """The type function's identity: module.qualname plus the values a factory closed over (multiple_of_8's flag)."""
    if kind is None:
        return None
    name = f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', repr(kind))}"
    cells = getattr(kind, "__closure__", None) or ()
    return name + (repr(tuple(c.cell_contents for c in cells)) if cells else "")


def meaning(action: argparse.Action) -> tuple:
    """What an option string means in one verb: action kind, type/validation, choices, nargs, const."""
    kind = type(action).__name__.lstrip("_").removesuffix("Action").lower()
    kind = REPEATABLE.get(kind, kind)
    choices = tuple(action.choices) if action.choices is not None else None
    return kind, _type_name(action.type), choices, action.nargs, action.const


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every verb's parser, with its options built (deqflow.cli's verb table)."""
    from deqflow.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def meanings() -> dict[str, dict[tuple, list[str]]]:
    """option string -> meaning -> the verbs where it has that meaning."""
    table: dict[str, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for verb, parser in verb_parsers().items():
        for option, action in parser._option_string_actions.items():
            if isinstance(action, argparse._HelpAction):
                continue
            table[option][meaning(action)].append(verb)
    return table


def ambiguous() -> dict[str, dict[tuple, list[str]]]:
    """The option strings with more than one meaning across the verbs."""
    return {option: dict(m) for option, m in meanings().items() if len(m) > 1}


def test_every_option_string_has_one_meaning():
    clashes = ambiguous()
    assert not clashes, "\n".join(f"{option}: " + "; ".join(f"{verbs} {m}" for m, verbs in by.items())
                                  for option, by in sorted(clashes.items()))


def test_the_shared_flags_are_in_the_verbs_that_need_them():
    table = meanings()
    where = {option: {v for verbs in table[option].values() for v in verbs} for option in table}
    assert {"infer", "serve", "compare", "bench", "evaluate", "train"} <= where["--device"]
    assert {"infer", "serve"} <= where["--backend"]
    assert {"compare", "bench"} <= where["--size"] and {"compare", "bench"} <= where["--candidate"]
    assert {"export", "bench", "train"} <= where["--batch"]
    assert {"serve", "triton-repo"} <= where["--max-batch"]
    assert where["--tolerance"] == {"export"}  # the solver tolerance; bench's allowed slowdown is --max-slowdown


def main() -> int:
    clashes = ambiguous()
    for option, by in sorted(clashes.items()):
        print(option)
        for m, verbs in by.items():
            print(f"    {', '.join(verbs)}: action={m[0]} type={m[1]} choices={m[2]} nargs={m[3]} const={m[4]}")
    print(f"option strings with more than one meaning: {len(clashes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
