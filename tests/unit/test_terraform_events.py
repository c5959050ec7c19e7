"""How the Terraform runner reads Terraform's JSON UI and reports failures."""

import pytest

from aegis_controller.terraform import (
    Terraform,
    TerraformError,
    TerraformEvent,
    TerraformNotFound,
    check_terraform,
)

pytestmark = pytest.mark.unit


def test_parses_a_json_ui_line():
    ev = TerraformEvent.parse(
        '{"@level":"info","@message":"terraform_data.x: Creation complete after 0s",'
        '"type":"apply_complete","hook":{"resource":{"addr":"terraform_data.x"},'
        '"action":"create"}}\n'
    )
    assert ev.type == "apply_complete"
    assert ev.level == "info"
    assert ev.message.startswith("terraform_data.x: Creation complete")
    assert ev.raw["hook"]["action"] == "create"
    assert ev.diagnostic is None


def test_non_json_line_becomes_a_text_event():
    ev = TerraformEvent.parse("Terraform crashed!\n")
    assert (ev.type, ev.message, ev.raw) == ("text", "Terraform crashed!", {})


def test_diagnostic_event_exposes_the_diagnostic():
    ev = TerraformEvent.parse(
        '{"@level":"error","@message":"Error: bad","type":"diagnostic",'
        '"diagnostic":{"severity":"error","summary":"bad","detail":"fix it"}}'
    )
    assert ev.diagnostic == {"severity": "error", "summary": "bad", "detail": "fix it"}


def test_error_message_names_verb_exit_code_and_diagnostics():
    err = TerraformError("apply", 1, [
        {"severity": "warning", "summary": "ignored warning"},
        {"severity": "error", "summary": "Invalid value for variable",
         "detail": "node names must be short.",
         "range": {"filename": "main.tf", "start": {"line": 12}}},
    ])
    text = str(err)
    assert text.startswith("terraform apply failed (exit 1): ")
    assert "Invalid value for variable: node names must be short. (main.tf:12)" in text
    assert "ignored warning" not in text


def test_error_falls_back_to_stderr_when_there_is_no_diagnostic():
    err = TerraformError("init", 1, [], "panic: something\nlast line of stderr\n")
    assert str(err) == "terraform init failed (exit 1): last line of stderr"


def test_missing_binary_says_how_to_fix_it(tmp_path):
    with pytest.raises(TerraformNotFound, match="install Terraform"):
        check_terraform("terraform-that-does-not-exist")
    tf = Terraform(tmp_path, binary="terraform-that-does-not-exist")
    with pytest.raises(TerraformNotFound, match="is not on PATH"):
        tf.init()


def test_environment_is_always_non_interactive_and_isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CLI_CONFIG_FILE", raising=False)
    tf = Terraform(tmp_path, data_dir=tmp_path / "d", env={"EXTRA": "1"})
    assert tf.env["CHECKPOINT_DISABLE"] == "1"
    assert tf.env["TF_IN_AUTOMATION"] == "1"
    assert tf.env["TF_INPUT"] == "0"
    assert tf.env["TF_CLI_CONFIG_FILE"] == "/dev/null"
    assert tf.env["TF_DATA_DIR"] == str(tmp_path / "d")
    assert tf.env["EXTRA"] == "1"
    rc = tmp_path / "cli.tfrc"
    assert Terraform(tmp_path, cli_config_file=rc).env["TF_CLI_CONFIG_FILE"] == str(rc)
