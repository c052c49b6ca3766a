"""Settings: flag > env > file > default, and one-line refusals (exit 2, nothing created)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qaic_device_plugin.config.load import build_parser, load
from qaic_device_plugin.config.settings import Settings, SettingsError
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.topology import MultiSocPolicy
from qaic_device_plugin.sim.process import plugin_command


def test_defaults() -> None:
    s = load([])
    assert s.sysfs_root == Path("/sys")
    assert s.dev_root == Path("/dev")
    assert s.device_plugin_dir == Path("/var/lib/kubelet/device-plugins")
    assert s.sku_based_resource_enabled is False
    assert s.allowed_shares == 1
    assert s.qaic_util_path is None
    assert (s.log_level, s.log_format) == ("info", "text")
    assert s.multi_soc_policy is MultiSocPolicy.PREFER


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("0", False), ("true", True), ("False", False), ("yes", True), ("no", False)],
)
def test_sku_switch_accepts_documented_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    monkeypatch.setenv("QAIC_SKU_BASED_RESOURCE_ENABLED", raw)
    assert load([]).sku_based_resource_enabled is expected


def test_precedence_flag_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "plugin.yaml"
    cfg.write_text(
        "ALLOWED_QAIC_DEVICE_SHARES: 2\nQAIC_LOG_LEVEL: debug\nQAIC_SYSFS_ROOT: /from/file\n"
        'QAIC_SKU_OVERRIDES: {"0000:05:00.0": Pro}\n'
    )
    monkeypatch.setenv("QAIC_CONFIG_FILE", str(cfg))
    s = load([])
    assert (s.allowed_shares, s.log_level, s.sysfs_root) == (2, "debug", Path("/from/file"))
    assert s.sku_overrides == {"0000:05:00.0": Sku.PRO}
    monkeypatch.setenv("ALLOWED_QAIC_DEVICE_SHARES", "3")
    assert load([]).allowed_shares == 3
    assert load(["--allowed-shares", "4"]).allowed_shares == 4
    assert load(["--sku-based-resource-enabled"]).sku_based_resource_enabled is True
    assert load(["--sku-based-resource-enabled=no"]).sku_based_resource_enabled is False


def test_state_file_defaults_under_the_plugin_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load([]).state_file is None  # App: <plugin dir>/qaic/state.json
    monkeypatch.setenv("QAIC_STATE_FILE", " ")
    assert load([]).state_file is None
    monkeypatch.setenv("QAIC_STATE_FILE", "/var/lib/qaic/state.json")
    assert load([]).state_file == Path("/var/lib/qaic/state.json")


def test_help_lists_every_setting_with_env_name_and_default() -> None:
    text = build_parser().format_help()
    for info in Settings.model_fields.values():
        assert isinstance(info.json_schema_extra, dict)
        assert f"env {info.json_schema_extra['env']}" in " ".join(text.split())


BAD = [
    (
        {"QAIC_SKU_BASED_RESOURCE_ENABLED": "maybe"},
        [],
        "invalid setting QAIC_SKU_BASED_RESOURCE_ENABLED='maybe': accepted: 1/0/true/false/yes/no",
    ),
    (
        {"ALLOWED_QAIC_DEVICE_SHARES": "-3"},
        [],
        "invalid setting ALLOWED_QAIC_DEVICE_SHARES='-3': accepted: an integer from 1 to 64",
    ),
    (
        {"ALLOWED_QAIC_DEVICE_SHARES": "two"},
        [],
        "invalid setting ALLOWED_QAIC_DEVICE_SHARES='two': accepted: an integer from 1 to 64",
    ),
    (
        {"QAIC_LOG_FORMAT": "xml"},
        [],
        "invalid setting QAIC_LOG_FORMAT='xml': accepted: one of text, json",
    ),
    (
        {"QAIC_LOG_LEVEL": "loud"},
        [],
        "invalid setting QAIC_LOG_LEVEL='loud': accepted: one of debug, info, warning, error",
    ),
    (
        {"QAIC_MULTI_SOC_POLICY": "always"},
        [],
        "invalid setting QAIC_MULTI_SOC_POLICY='always': accepted: one of prefer, require",
    ),
    (
        {"QAIC_HEALTH_POLL_SECONDS": "0"},
        [],
        "invalid setting QAIC_HEALTH_POLL_SECONDS='0': accepted: a number of seconds > 0",
    ),
    (
        {"QAIC_SKU_OVERRIDES": '{"0000:05:00.0": "gold"}'},
        [],
        "invalid setting QAIC_SKU_OVERRIDES='gold': accepted: a JSON object of PCI address",
    ),
    (
        {"QAIC_SKU_OVERRIDES": "{oops"},
        [],
        "invalid setting QAIC_SKU_OVERRIDES='{oops': not valid JSON",
    ),
    (
        {"QAIC_POD_RESOURCES_SOCKET": ""},
        [],
        "invalid setting QAIC_POD_RESOURCES_SOCKET='': accepted: a socket path",
    ),
    (
        {"QAIC_STATE_FILE": "/var/lib/qaic/"},
        [],
        "invalid setting QAIC_STATE_FILE='/var/lib/qaic/': accepted: a file path",
    ),
    (
        {"QAIC_CONFIG_FILE": "/nonexistent/plugin.yaml"},
        [],
        "invalid setting QAIC_CONFIG_FILE='/nonexistent/plugin.yaml': file not found",
    ),
    (
        {},
        ["--device-plugin-dir", "/var/lib/" + "k" * 70],
        "invalid setting QAIC_DEVICE_PLUGIN_DIR='/var/lib/kkk",
    ),
    (
        {},
        ["--allowed-shares", "0"],
        "invalid setting ALLOWED_QAIC_DEVICE_SHARES='0' (flag --allowed-shares): accepted:",
    ),
]


@pytest.mark.parametrize(("env", "args", "line"), BAD, ids=[b[2][16:60] for b in BAD])
def test_bad_setting_exits_2_with_one_line_and_creates_nothing(
    tmp_path: Path, env: dict[str, str], args: list[str], line: str
) -> None:
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    full_env = {"PATH": "/usr/bin:/bin", "QAIC_DEVICE_PLUGIN_DIR": str(plugin_dir), **env}
    proc = subprocess.run(
        [*plugin_command(), *args], env=full_env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"qaic-device-plugin: {line}"), lines[0]
    assert "Traceback" not in proc.stderr
    assert list(plugin_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("BOGUS_KEY: 1\n", "unknown setting 'BOGUS_KEY' in the config file: accepted keys:"),
        ("a: [\n", "invalid setting QAIC_CONFIG_FILE="),
        ("- just\n- a list\n", "invalid setting QAIC_CONFIG_FILE="),
        (
            "QAIC_SKU_BASED_RESOURCE_ENABLED: sometimes\n",
            "invalid setting QAIC_SKU_BASED_RESOURCE_ENABLED='sometimes'",
        ),
    ],
)
def test_bad_config_file_is_one_line(tmp_path: Path, content: str, fragment: str) -> None:
    cfg = tmp_path / "plugin.yaml"
    cfg.write_text(content)
    with pytest.raises(SettingsError) as err:
        load(["--config-file", str(cfg)])
    assert len(str(err.value).splitlines()) == 1
    assert fragment in str(err.value)


def test_version_flag() -> None:
    from qaic_device_plugin import __version__

    proc = subprocess.run(
        [*plugin_command(), "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"qaic-device-plugin {__version__}"
