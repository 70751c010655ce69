"""The README's benchmark tables are copies of the files the benchmark scripts write (scripts/update_readme.py):
a table edited by hand, or a benchmark re-run without refreshing the README, fails here."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
update_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_readme)


def test_readme_tables_match_their_files():
    readme = (ROOT / "README.md").read_text()
    _, stale = update_readme.render(readme)
    assert update_readme.BLOCK.search(readme), "README has no generated blocks"
    assert stale == [], f"README blocks out of date (run python scripts/update_readme.py): {stale}"


def test_stale_block_is_refreshed_and_reported(tmp_path):
    (tmp_path / "t.md").write_text("# T\n\n## Run\n| a |\n|---|\n| 2 |\n\n## Other\nx\n")
    readme = "intro\n<!-- generated from t.md#Run -->\n| a |\n|---|\n| 1 |\n<!-- end generated -->\nend\n"
    new, stale = update_readme.render(readme, tmp_path)
    assert stale == ["t.md"]
    assert new == "intro\n<!-- generated from t.md#Run -->\n| a |\n|---|\n| 2 |\n<!-- end generated -->\nend\n"
    assert update_readme.render(new, tmp_path)[1] == []


def test_missing_source_or_section_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        update_readme.render("<!-- generated from nope.md -->\nx\n<!-- end generated -->\n", tmp_path)
    (tmp_path / "t.md").write_text("## A\n1\n")
    with pytest.raises(SystemExit, match="no section headed 'B'"):
        update_readme.render("<!-- generated from t.md#B -->\nx\n<!-- end generated -->\n", tmp_path)


def test_check_exit_code(tmp_path, capsys):
    (tmp_path / "t.md").write_text("new\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- generated from t.md -->\nold\n<!-- end generated -->\n")
    assert update_readme.main(["--check", "--readme", str(readme)]) == 1
    assert "stale: the README block from t.md" in capsys.readouterr().err
    assert update_readme.main(["--readme", str(readme)]) == 0
    assert update_readme.main(["--check", "--readme", str(readme)]) == 0
    assert "new" in readme.read_text()
