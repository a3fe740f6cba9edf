"""docs/errors.md is the bad-input table as the user sees it: regenerated from real runs."""

from conftest import load_script


def test_errors_page_is_current(lre_env):
    assert load_script("error_table").main(["--check"]) == 0, "run `python scripts/error_table.py` and commit docs/errors.md"
