"""Every invalid setting, as an environment variable, a flag and a config-file key, and every
kind of broken config file: exit 2, exactly one line on stderr naming the setting, nothing in
the plugin dir and nothing registered with the kubelet that is listening there.

The invalid values are derived from each setting's type and bounds, so a setting added later
is covered without editing this file (test_every_setting_has_a_bad_value keeps that honest).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic.fields import FieldInfo
from reliability_harness import FULL, Report

from qaic_device_plugin.config.settings import CONFIG_FILE_ENV, Settings
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.process import plugin_command

pytestmark = pytest.mark.reliability

PARALLEL = 4  # processes at once: each start imports grpc and pydantic (CPU-bound)
# Types whose every value parses (paths, optional strings): nothing to refuse at load time.
FREE_FORM_TYPES: tuple[Any, ...] = (Path, Path | None, str | None)


def env_name(info: FieldInfo) -> str:
    assert isinstance(info.json_schema_extra, dict)
    return str(info.json_schema_extra["env"])


def _bounds(info: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, name.capitalize())):
                out[name] = getattr(m, name)
    return out


# Settings of a type with no bad value to derive (a plain str): refused by FORMER_GAPS cases.
EXPLICIT = {"metrics_address"}


def bad_values(info: FieldInfo) -> list[str]:
    """Values the setting must refuse, from its type and bounds."""
    ann, b = info.annotation, _bounds(info)
    if ann is bool:
        return ["maybe", "2", ""]
    if ann is int:
        out = ["x", "1.5", ""]
        out += [str(b["ge"] - 1)] if "ge" in b else []
        out += [str(b["gt"])] if "gt" in b else []
        out += [str(b["le"] + 1)] if "le" in b else []
        return out
    if ann is float or ann == float | None:  # unset (None) is the derived default
        out = ["x", "nan", "-inf"] + ([""] if ann is float else [])
        out += [str(b["gt"])] if "gt" in b else []
        out += [str(b["ge"] - 1)] if "ge" in b else []
        return out
    if get_origin(ann) is Literal:
        return ["bogus", ""]
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return ["bogus", ""]
    if get_origin(ann) is dict:
        _, value_type = get_args(ann)
        out = ["{oops", "[1]", '"text"']
        if isinstance(value_type, type) and issubclass(value_type, enum.Enum):
            out.append('{"0000:05:00.0": "bogus"}')
        return out
    return []


@dataclass(frozen=True)
class Case:
    id: str
    env: dict[str, str]
    args: tuple[str, ...]
    line: str  # how the one stderr line must start, after "qaic-device-plugin: "
    config: str | bytes | None = None  # written to a file named by QAIC_CONFIG_FILE
    config_mode: int = 0o644


def env_cases() -> Iterator[Case]:
    """Every bad value as an environment variable; as a flag and as a config-file key, the
    first one (the short run) or all of them (the full run)."""
    for name, info in Settings.model_fields.items():
        env = env_name(info)
        flag = "--" + name.replace("_", "-")
        values = bad_values(info)
        for i, value in enumerate(values):
            yield Case(f"env-{env}-{i}", {env: value}, (), f"invalid setting {env}=")
            if not value or (i > 0 and not FULL):
                continue  # an empty flag value is argparse's business, not a setting's
            yield Case(f"flag-{flag}-{i}", {}, (f"{flag}={value}",), f"invalid setting {env}=")
            parsed: Any = value
            if value.startswith(("{", "[", '"')):
                with contextlib.suppress(ValueError):
                    parsed = json.loads(value)
            config = json.dumps({env: parsed})  # JSON is YAML
            yield Case(f"file-{env}-{i}", {}, (), f"invalid setting {env}=", config)


BAD_FILE = f"invalid setting {CONFIG_FILE_ENV}="
FILE_CASES = [
    Case("file-unknown-key", {}, (), "unknown setting 'BOGUS' in the config file", "BOGUS: 1\n"),
    Case("file-bad-yaml", {}, (), f"invalid setting {CONFIG_FILE_ENV}=", "a: [\n"),
    Case("file-a-list", {}, (), f"invalid setting {CONFIG_FILE_ENV}=", "- a\n- b\n"),
    Case("file-a-string", {}, (), f"invalid setting {CONFIG_FILE_ENV}=", "just text\n"),
    Case("file-not-utf8", {}, (), f"invalid setting {CONFIG_FILE_ENV}=", b"\xff\xfe\x00bad\n"),
    Case("file-yaml-2", {}, (), f"invalid setting {CONFIG_FILE_ENV}=", "%YAML 9.9\n---\na: 1\n"),
    Case(
        "file-self-reference", {}, (), "unknown setting 'QAIC_CONFIG_FILE'", "QAIC_CONFIG_FILE: x\n"
    ),
    Case(
        "file-unreadable",
        {},
        (),
        f"invalid setting {CONFIG_FILE_ENV}=",
        "QAIC_LOG_LEVEL: debug\n",
        config_mode=0o000,
    ),
    Case(
        "file-missing",
        {CONFIG_FILE_ENV: "/nonexistent/plugin.yaml"},
        (),
        f"invalid setting {CONFIG_FILE_ENV}=",
    ),
    Case("file-is-a-dir", {CONFIG_FILE_ENV: "/"}, (), f"invalid setting {CONFIG_FILE_ENV}="),
    Case(
        "flag-config-missing",
        {},
        ("--config-file=/nonexistent.yaml",),
        f"invalid setting {CONFIG_FILE_ENV}=",
    ),
]

# Once gaps (the plugin used to accept these); kept as ordinary cases so they stay refused.
FORMER_GAPS = [
    Case(
        "metrics-address-not-an-ip",
        {"QAIC_METRICS_ADDRESS": "not-an-ip", "QAIC_METRICS_PORT": "19191"},
        (),
        "invalid setting QAIC_METRICS_ADDRESS=",
    ),
    Case(
        "sku-override-key-not-pci",
        {"QAIC_SKU_OVERRIDES": '{"not-a-pci-address": "pro"}'},
        (),
        "invalid setting QAIC_SKU_OVERRIDES=",
    ),
    Case(
        "plugin-dir-cannot-be-created",
        {"QAIC_DEVICE_PLUGIN_DIR": "{tmp}/a-file/device-plugins"},
        (),
        "invalid setting QAIC_DEVICE_PLUGIN_DIR=",
    ),
]


def drop_dac_caps() -> list[str]:
    """As root, drop the capabilities that bypass file permissions (else mode 000 reads)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


@dataclass
class Outcome:
    case: Case
    rc: int
    stderr: str
    stdout: str
    left: list[str]
    registrations: int


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short base dir: a Unix socket path has at most 107 characters, tmp_path is long."""
    d = Path(tempfile.mkdtemp(prefix="qrel-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def run_case(case: Case, base: Path, gate: asyncio.Semaphore, limit: float = 30.0) -> Outcome:
    """The console script with only `case`'s input, next to a listening kubelet."""
    work = Path(tempfile.mkdtemp(prefix="c", dir=base))
    plugin_dir = work / "device-plugins"
    plugin_dir.mkdir(parents=True)
    (work / "a-file").write_text("")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "QAIC_DEVICE_PLUGIN_DIR": str(plugin_dir),
        "QAIC_SYSFS_ROOT": str(work / "sys"),
        "QAIC_DEV_ROOT": str(work / "dev"),
        "QAIC_UTIL_PATH": str(work / "no-qaic-util"),
    }
    env.update({k: v.replace("{tmp}", str(work)) for k, v in case.env.items()})
    prefix: list[str] = []
    if case.config is not None:
        cfg = work / "plugin.yaml"
        data = case.config.encode() if isinstance(case.config, str) else case.config
        cfg.write_bytes(data)
        cfg.chmod(case.config_mode)
        env[CONFIG_FILE_ENV] = str(cfg)
        if case.config_mode == 0:
            prefix = drop_dac_caps()
    async with gate, KubeletSim(plugin_dir) as kubelet:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *plugin_command(),
            *case.args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
        left = sorted(p.name for p in plugin_dir.iterdir() if p.name != "kubelet.sock")
        return Outcome(
            case,
            proc.returncode if proc.returncode is not None else -1,
            err.decode(errors="replace"),
            out.decode(errors="replace"),
            left,
            len(kubelet.registrations),
        )


def problems(o: Outcome) -> list[str]:
    lines = o.stderr.splitlines()
    out = []
    if o.rc != 2:
        out.append(f"exit {o.rc}")
    if len(lines) != 1:
        out.append(f"{len(lines)} stderr lines")
    elif not lines[0].startswith(f"qaic-device-plugin: {o.case.line}"):
        out.append(f"line {lines[0]!r}")
    if o.stdout:
        out.append(f"stdout {o.stdout[:80]!r}")
    if o.left:
        out.append(f"left {o.left}")
    if o.registrations:
        out.append(f"{o.registrations} registrations")
    return [f"{o.case.id}: {p}" for p in out]


def test_every_setting_has_a_bad_value() -> None:
    """A new setting gets refusal cases from its type automatically; one of a type this file
    cannot derive a bad value for (a plain `str`, say) must get cases here on purpose."""
    untested = {
        n: i.annotation
        for n, i in Settings.model_fields.items()
        if not bad_values(i) and i.annotation not in FREE_FORM_TYPES and n not in EXPLICIT
    }
    assert untested == {}


async def test_every_invalid_setting_exits_2_with_one_line_and_registers_nothing(
    short_tmp: Path, report: Report
) -> None:
    cases = [*env_cases(), *FILE_CASES]
    report.tried = "invalid settings (env, flag, config file) and broken config files"
    gate = asyncio.Semaphore(PARALLEL)
    outcomes = await asyncio.gather(*(run_case(c, short_tmp, gate) for c in cases))
    bad = [p for o in outcomes for p in problems(o)]
    report.count = len(cases)
    report.lost = len({p.split(":", 1)[0] for p in bad})
    report.details.update(
        settings=len(Settings.model_fields),
        env=sum(c.id.startswith("env-") for c in cases),
        flag=sum(c.id.startswith("flag-") for c in cases),
        file=sum(c.id.startswith("file-") for c in cases),
    )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("case", FORMER_GAPS, ids=[c.id for c in FORMER_GAPS])
async def test_former_gap_is_refused(case: Case, short_tmp: Path) -> None:
    o = await run_case(case, short_tmp, asyncio.Semaphore(1), limit=4.0)
    assert not problems(o), [*problems(o), o.stderr[-400:]]
