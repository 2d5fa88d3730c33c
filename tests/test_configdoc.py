"""Every run setting has one help text, shared by `fedkd run --help` and docs/configuration.md,
and the page is what the generator makes of Config today."""

from dataclasses import fields
from pathlib import Path

import pytest

from fedkd import configdoc, confighelp
from fedkd.cli import build_parser
from fedkd.config import Config

FIELDS = [f.name for f in fields(Config)]
PAGE = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_every_config_field_has_a_help_text():
    assert confighelp.missing_help(FIELDS) == [], "add these to HELP in fedkd/confighelp.py"


def test_help_describes_only_fields_that_exist():
    assert sorted(set(confighelp.HELP) - set(FIELDS)) == []


@pytest.mark.parametrize("name", sorted(confighelp.CHOICES))
def test_help_names_every_choice_of_a_setting(name):
    missing = [c for c in confighelp.CHOICES[name] if c not in confighelp.HELP[name]]
    assert missing == [], f"{name}: its help does not name {missing}"


def test_help_says_what_the_automatic_value_means():
    # a field whose default is the automatic -1 (or "auto") says what auto resolves to
    defaults = Config()
    auto = [n for n in FIELDS if getattr(defaults, n) in (-1, "auto") and not isinstance(getattr(defaults, n), bool)]
    assert auto, "expected some automatic settings"
    assert [n for n in auto if "auto" not in confighelp.HELP[n]] == []


def test_configuration_page_is_current():
    assert PAGE.read_text(encoding="utf-8") == configdoc.render(), "run: python -m fedkd.configdoc"


def test_the_page_has_one_row_per_setting_with_its_default():
    text = configdoc.render()
    for f in fields(Config):
        assert f"| `{f.name.replace('_', '-')}` |" in text
    assert '| `"dirichlet"` |' in text and "| `-1.0` |" in text


def test_a_field_without_help_stops_the_generator_naming_it(monkeypatch):
    monkeypatch.delitem(confighelp.HELP, "alpha")
    with pytest.raises(configdoc.MissingHelpError, match="alpha"):
        configdoc.render()


def test_check_reports_a_stale_page(monkeypatch, tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    monkeypatch.setattr(configdoc, "PAGE", stale)
    assert configdoc.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert configdoc.main([]) == 0 and configdoc.main(["--check"]) == 0


def test_run_help_shows_each_setting_with_its_help():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    text = " ".join(run.format_help().split())  # argparse wraps lines; "%" in a text would raise here
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in text
    assert " ".join(confighelp.HELP["consensus_weight"].split()) in text
