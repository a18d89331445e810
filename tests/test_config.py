"""Settings: parsing, validation, precedence."""

import pytest
from pydantic import ValidationError

from rlmbox.config import LLMSettings, SandboxConfig, Settings, parse_size


def test_sizes_parse_binary_units():
    assert parse_size("512m") == 512 * 2**20
    assert parse_size("2g") == 2 * 2**30
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size(4096) == 4096
    for bad in ("lots", "-1g", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_sandbox_limits_are_validated():
    with pytest.raises(ValidationError):
        SandboxConfig(cpus=0)
    with pytest.raises(ValidationError):
        SandboxConfig(memory="a lot")
    with pytest.raises(ValidationError):
        SandboxConfig(user="root")
    with pytest.raises(ValidationError, match="too long"):
        SandboxConfig(runtime_dir="/tmp/" + "x" * 80)
    with pytest.raises(ValidationError):
        SandboxConfig(backend="kubernetes")


def test_environment_fills_what_arguments_leave_unset(monkeypatch):
    monkeypatch.setenv("RLMBOX_SANDBOX__MEMORY", "2g")
    monkeypatch.setenv("RLMBOX_SANDBOX__CPUS", "1.5")
    monkeypatch.setenv("RLMBOX_LIMITS__MAX_ITERATIONS", "7")
    settings = Settings(sandbox={"cpus": 0.5})
    assert settings.sandbox.memory == 2 * 2**30
    assert settings.sandbox.cpus == 0.5  # the argument wins over the environment
    assert settings.limits.max_iterations == 7


def test_short_model_variables(monkeypatch):
    monkeypatch.setenv("RLMBOX_MODEL", "openai/gpt-5-mini")
    monkeypatch.setenv("RLMBOX_API_KEY", "sk-secret-value")
    llm = Settings().llm
    assert llm.model == "openai/gpt-5-mini"
    assert llm.effective_sub_model == "openai/gpt-5-mini"
    assert "sk-secret-value" not in repr(llm)
    assert "sk-secret-value" not in Settings().model_dump_json()


def test_sub_model_defaults_to_root_model():
    assert LLMSettings(model="a", sub_model=None).effective_sub_model == "a"
    assert LLMSettings(model="a", sub_model="b").effective_sub_model == "b"


def test_unknown_settings_are_rejected():
    with pytest.raises(ValidationError):
        Settings(sandbox={"memroy": "1g"})
