"""DEQConfig: torch-free import, every solver option settable (fields and official-style flags), per-call
overrides resolved without touching the config, and old stored config dicts still loading."""

import argparse
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deqflow.errors import InputError
from deqflow.solver_spec import SOLVER_OPTIONS, AndersonOptions, BroydenOptions, FixedPointOptions, SolveOverrides
from training.config import ModelConfig
from training.deq.args import add_deq_args, deq_config_from_args
from training.deq.config import LEGACY_OPTION_FIELDS, DEQConfig

ROOT = Path(__file__).resolve().parents[1]

TORCH_FREE = textwrap.dedent("""
    import argparse, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    from deqflow.errors import InputError
    from training.config import ModelConfig
    from training.deq.args import add_deq_args, deq_config_from_args
    from training.deq.config import DEQConfig
    from deqflow.solver_spec import BroydenOptions, SolveOverrides
    import training.deq

    cfg = DEQConfig(f_solver="naive_solver", b_solver="broyden", broyden=BroydenOptions(memory=3), f_stop_mode="rel")
    assert cfg.forward_solve().method == "fixed_point"
    assert cfg.backward_solve().options.memory == 3
    assert cfg.forward_solve(SolveOverrides(method="anderson", tol=0.0)).stop.tol == 0.0
    try:
        DEQConfig(f_solver="newton")
    except InputError as exc:
        assert "unknown solver" in str(exc)
    else:
        raise AssertionError("an unknown solver was accepted")
    parser = argparse.ArgumentParser()
    add_deq_args(parser)
    assert deq_config_from_args(parser.parse_args(["--broyden_memory", "4"])).broyden.memory == 4
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    assert sys.modules["torch"] is None
    print("torch-free ok")
""")


def test_config_imports_and_validates_without_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", TORCH_FREE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch-free ok" in out.stdout


def test_every_solver_option_is_a_config_field_a_stored_key_and_a_flag():
    parser = argparse.ArgumentParser()
    add_deq_args(parser)
    for solver, options_type in SOLVER_OPTIONS.items():
        keys = {key: option for key, (owner, option) in LEGACY_OPTION_FIELDS.items() if owner == solver}
        assert set(keys.values()) == {f.name for f in dataclasses.fields(options_type)}
        assert DEQConfig().solver_options(solver) == options_type()  # the config holds that solver's defaults
        for key, option in keys.items():
            default = getattr(options_type(), option)
            changed = 0.5 if isinstance(default, float) else default + 2
            cfg = DEQConfig(**{solver: dataclasses.replace(options_type(), **{option: changed})})
            assert getattr(cfg.solver_options(solver), option) == changed
            assert cfg.to_dict()[key] == changed  # stored under the official flat key, as files always held it
            assert DEQConfig.from_dict(cfg.to_dict()) == cfg
            from_flags = deq_config_from_args(parser.parse_args([f"--{key}", str(changed)]))
            assert getattr(from_flags.solver_options(solver), option) == changed


def test_overrides_resolve_without_changing_the_config():
    cfg = DEQConfig(f_solver="anderson", anderson=AndersonOptions(m=4), f_tol=1e-3, return_final=False)
    before = dataclasses.asdict(cfg)
    default = cfg.forward_solve()
    d = default.stop
    assert (default.method, d.tol, d.stop_mode, default.return_final) == ("anderson", 1e-3, "abs", False)
    assert default.options == AndersonOptions(m=4)
    changed = cfg.forward_solve(SolveOverrides(method="naive_solver", tol=0.0, stop_mode="rel", return_final=True))
    c = changed.stop
    assert (changed.method, c.tol, c.stop_mode, changed.return_final) == ("fixed_point", 0.0, "rel", True)
    assert changed.options == FixedPointOptions()  # the config's options of the overriding solver
    given = cfg.forward_solve(SolveOverrides(method="broyden", options=BroydenOptions(memory=2)))
    assert given.options == BroydenOptions(memory=2)
    assert dataclasses.asdict(cfg) == before
    with pytest.raises(InputError, match="takes AndersonOptions, got BroydenOptions"):
        cfg.forward_solve(SolveOverrides(options=BroydenOptions()))
    with pytest.raises(InputError, match="stop mode"):
        cfg.forward_solve(SolveOverrides(stop_mode="max"))
    with pytest.raises(InputError, match="unknown solver"):
        cfg.forward_solve(SolveOverrides(method="lbfgs"))
    with pytest.raises(InputError, match="anderson m"):
        cfg.forward_solve(SolveOverrides(options=AndersonOptions(m=0)))


def test_stored_config_dicts_without_newer_fields_still_load():
    stored = ModelConfig(variant="T").to_dict()
    assert stored["deq"]["broyden_memory"] == 0
    del stored["deq"]["broyden_memory"]  # a checkpoint written before the field existed
    loaded = ModelConfig.from_dict(stored)
    assert loaded.deq.broyden.memory == 0 and loaded == ModelConfig(variant="T")
    stored["deq"]["f_solver"] = "naive_solver"  # official name in an old config
    assert ModelConfig.from_dict(stored).deq.forward_solve().method == "fixed_point"
    with pytest.raises(InputError, match="unknown DEQ config keys"):
        ModelConfig.from_dict({**stored, "deq": {**stored["deq"], "memory": 3}})
