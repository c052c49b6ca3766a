"""Reading the settings: flags > environment > the YAML file named by QAIC_CONFIG_FILE, and
bad input turned into one line per setting (SettingsError) that names it, its value and what
is accepted. The model itself, and what each setting means, is settings.py."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic_settings
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, YamlConfigSettingsSource

from .. import __version__
from .settings import CONFIG_FILE_ENV, Settings, SettingsError


def _env_name(name: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra
    return str(extra["env"]) if isinstance(extra, dict) else name.upper()


def _accepted(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    return str(extra.get("accepted")) if isinstance(extra, dict) else "?"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qaic-device-plugin",
        description="Kubernetes device plugin for Qualcomm Cloud AI 100 accelerators. "
        "Each setting is a flag, an environment variable, or a key of the YAML file named by "
        f"{CONFIG_FILE_ENV} (flag > env > file > default).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"qaic-device-plugin {__version__}")
    parser.add_argument(
        "--config-file",
        metavar="PATH",
        dest="config_file",
        help=f"YAML settings file [env {CONFIG_FILE_ENV}]",
    )
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        default = info.default if not isinstance(info.default, Path) else str(info.default)
        is_bool = info.annotation is bool
        parser.add_argument(
            _flag(name),
            dest=name,
            metavar="BOOL" if is_bool else "VALUE",
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
            help=f"{info.description} [env {extra.get('env')}; accepts {extra.get('accepted')}; "
            f"default {default!r}]",
        )
    return parser


def _describe(error: Mapping[str, Any], flags: Mapping[str, str]) -> str:
    loc = str(error["loc"][0]) if error["loc"] else "?"
    for name, info in Settings.model_fields.items():
        env = _env_name(name, info)
        if loc in (name, env, env.lower()):
            where = f" (flag {_flag(name)})" if name in flags else ""
            return f"invalid setting {env}={error['input']!r}{where}: accepted: {_accepted(info)}"
    accepted = ", ".join(_env_name(n, i) for n, i in Settings.model_fields.items())
    return f"unknown setting {loc!r} in the config file: accepted keys: {accepted}"


def _reading(config_file: Path | None) -> type[Settings]:
    """Settings whose sources are flags (init) > environment > this YAML file."""

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if config_file is None:
                return (init_settings, env_settings)
            return (
                init_settings,
                env_settings,
                YamlConfigSettingsSource(settings_cls, yaml_file=config_file),
            )

    return _Sourced


def load(argv: Sequence[str] | None = None) -> Settings:
    """Parse flags, environment and the optional YAML file; raise SettingsError on bad input."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config_file", None) or os.environ.get(CONFIG_FILE_ENV)
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        raise SettingsError(
            f"invalid setting {CONFIG_FILE_ENV}={config_file!r}: file not found; "
            "accepted: the path of a readable YAML file"
        )
    by_env = {_env_name(n, Settings.model_fields[n]): v for n, v in args.items()}
    file_errors: tuple[type[Exception], ...] = (OSError, ValueError, TypeError, AttributeError)
    if path is not None:  # PyYAML only when there is a file to read (issue 11: imports cost)
        import yaml

        file_errors += (yaml.YAMLError,)
    try:
        return _reading(path)(**by_env)
    except ValidationError as e:
        raise SettingsError("\n".join(_describe(err, args) for err in e.errors())) from None
    except pydantic_settings.SettingsError as e:  # a complex value (JSON) that does not parse
        field = str(e).split('"')[1] if '"' in str(e) else "?"
        info = Settings.model_fields.get(field)
        env = _env_name(field, info) if info else field
        raw = os.environ.get(env, os.environ.get(env.lower(), ""))
        raise SettingsError(
            f"invalid setting {env}={raw!r}: not valid JSON; accepted: "
            + (_accepted(info) if info else "JSON")
        ) from None
    except file_errors as e:
        reason = " ".join(str(e).split())  # YAML errors span lines; keep one
        raise SettingsError(
            f"invalid setting {CONFIG_FILE_ENV}={config_file!r}: {reason}; "
            "accepted: a YAML mapping of setting names to values"
        ) from None
