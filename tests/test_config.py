"""Settings: defaults, environment, command line, and the app factory that reads them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from audioserver import config, create_app


def test_defaults_match_the_contract():
    defaults = config.defaults()
    assert defaults["PORT"] == 5001
    assert defaults["MAX_UPLOAD_MB"] == 500
    assert defaults["WORKERS"] >= 1


def test_environment_overrides_with_and_without_prefix():
    found = config.from_environment({"PORT": "6000", "AUDIO_WORKERS": "3", "AUDIO_HOST": "0.0.0.0"})
    assert found == {"PORT": 6000, "WORKERS": 3, "HOST": "0.0.0.0"}
    assert config.from_environment({"WORKERS": "3"}) == {}  # only HOST and PORT go unprefixed


def test_a_bad_environment_value_stops_with_a_clear_message():
    with pytest.raises(SystemExit, match="AUDIO_WORKERS='many' is not a valid int"):
        config.from_environment({"AUDIO_WORKERS": "many"})


def test_command_line_flags():
    assert config.parse_command_line(["--port", "7000", "--max-upload-mb", "20"]) == {
        "PORT": 7000,
        "MAX_UPLOAD_MB": 20.0,
    }


def test_help_lists_every_setting():
    result = subprocess.run(
        [sys.executable, "app.py", "--help"], capture_output=True, text=True, check=True
    )
    for setting in config.SETTINGS:
        assert setting.flag in result.stdout
        assert setting.env_name in result.stdout


def test_create_app_applies_test_config_and_upload_limit(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "d"), "WORKERS": 3, "MAX_UPLOAD_MB": 2})
    try:
        assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024
        assert app.extensions["audio_engine"].workers == 3
        assert (tmp_path / "d" / "uploads").is_dir()
        assert app.extensions["socketio"].server.eio.async_mode == "threading"
    finally:
        app.extensions["audio_engine"].shutdown()
