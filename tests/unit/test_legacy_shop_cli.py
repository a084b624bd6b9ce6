"""``legacy serve``'s command line: usage errors never start a server."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from examples.legacy_shop.cli import legacy


def test_missing_database_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(legacy, ["serve", "--port", "8123"], env={"LEGACY_DB_URL": None})
    assert result.exit_code == 2
    assert "Missing option '--legacy-db-url'" in result.output


def test_missing_port_is_a_usage_error() -> None:
    result = CliRunner().invoke(legacy, ["serve"], env={"LEGACY_DB_URL": "sqlite:///unused.db"})
    assert result.exit_code == 2
    assert "Missing option '--port'" in result.output


def test_out_of_range_values_are_usage_errors() -> None:
    for args in (["--port", "0"], ["--port", "8123", "--workers", "0"]):
        result = CliRunner().invoke(
            legacy, ["serve", *args], env={"LEGACY_DB_URL": "sqlite:///unused.db"}
        )
        assert result.exit_code == 2, args
        assert "Invalid value" in result.output


def test_help_names_the_environment_variable() -> None:
    result = CliRunner().invoke(legacy, ["serve", "--help"])
    assert result.exit_code == 0
    assert "LEGACY_DB_URL" in result.output
    assert "--threads" in result.output


def test_unparsable_database_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(legacy, ["serve", "--port", "8123", "--legacy-db-url", "nope"])
    assert result.exit_code == 2
    assert "Invalid value for --legacy-db-url" in result.output


def test_unreachable_database_fails_in_one_line_before_serving(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'legacy.db'}"
    result = CliRunner().invoke(legacy, ["serve", "--port", "8123", "--legacy-db-url", url])
    assert result.exit_code == 1
    assert (
        result.output == "Error: cannot prepare the legacy database: unable to open database file\n"
    )
