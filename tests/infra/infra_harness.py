"""Test harness for the Pulumi program: recording mocks, stack files read the way the CLI
reads them, and conversion of the recorded pulumi-kubernetes inputs to manifests."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

ROOT = Path(__file__).resolve().parents[2]
STACKS_DIR = ROOT / "stacks"
PROJECT = "qaic-k8s"
FAKE_DIGEST = "sha256:" + "ab" * 32


@dataclass
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]
    provider: str | None
    custom: bool


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource; returns what the real providers would compute."""

    resources: list[Recorded] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(
            Recorded(args.typ, args.name, dict(args.inputs), args.provider, bool(args.custom))
        )
        state = dict(args.inputs)
        if args.typ == "docker-build:index:Image":
            tags = list(state.get("tags") or [])
            # The provider's `ref`: pushed tag@digest, else one of the tags.
            state["ref"] = f"{tags[0]}@{FAKE_DIGEST}" if state.get("push") else tags[0]
            state["digest"] = FAKE_DIGEST
        return f"{args.name}-id", state

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Recorded:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, got {[r.name for r in found]}"
        return found[0]


# --- stack files, as the CLI reads them ------------------------------------------------------

def project_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    return data


def _cli_text(value: Any) -> str:
    """The CLI passes strings as is, booleans as true/false, objects/arrays as JSON text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def fake_decrypt(ciphertext: str) -> str:
    """Stands in for the secrets provider: a stable plaintext per ciphertext."""
    return "decrypted-" + hashlib.sha256(ciphertext.encode()).hexdigest()[:16]


def _type_ok(decl: dict[str, Any], value: Any) -> bool:
    """workspace.ValidateConfigValue of the Pulumi CLI."""
    kind = decl["type"]
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit()
        )
    if kind == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if kind == "array":
        return isinstance(value, list) and all(_type_ok(decl["items"], v) for v in value)
    return False


def cli_config(
    stack_values: dict[str, Any], stack: str = "test"
) -> tuple[dict[str, str], list[str]]:
    """Merge project defaults and stack values like `pulumi up` does; return the flat
    ``<project>:<key> -> text`` map and the secret keys. Raises on CLI-level errors."""
    declared: dict[str, Any] = project_file()["config"]
    out: dict[str, str] = {}
    secrets: list[str] = []
    for key, raw in stack_values.items():
        namespace, _, short = key.partition(":")
        if isinstance(raw, dict) and set(raw) == {"secure"}:
            value: Any = fake_decrypt(str(raw["secure"]))
            secrets.append(key)
        else:
            value = raw
            if namespace == PROJECT and declared.get(short, {}).get("secret"):
                raise ValueError(f"Stack '{stack}' with configuration key '{short}' must be "
                                 "encrypted as it's secret")
        if namespace == PROJECT and short in declared and not _type_ok(declared[short], value):
            raise ValueError(f"Stack '{stack}' with configuration key '{short}' must be of "
                             f"type '{declared[short]['type']}'")
        out[key] = _cli_text(value)
    for short, decl in declared.items():
        out.setdefault(f"{PROJECT}:{short}", _cli_text(decl["default"]))
    return out, secrets


def stack_files() -> list[Path]:
    return sorted(STACKS_DIR.glob("Pulumi.*.yaml"))


def stack_name(path: Path) -> str:
    return path.name[len("Pulumi."):-len(".yaml")]


def read_stack(path: Path) -> tuple[dict[str, str], list[str]]:
    data = yaml.safe_load(path.read_text()) or {}
    return cli_config(dict(data.get("config") or {}), stack_name(path))


# --- running the program under mocks ---------------------------------------------------------

@dataclass
class Run:
    mocks: RecordingMocks
    program: Any
    outputs: dict[str, Any]
    applied: list[str]


def run_program(
    config: dict[str, str], secrets: list[str] | None = None, stack: str = "test"
) -> Run:
    """Run infra.program.run() under mocks with preview=False; resolve every output."""
    from infra.program import run

    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False)
    pulumi.runtime.set_all_config(dict(config), list(secrets or []))
    result: dict[str, Any] = {}
    applied: list[str] = []

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def go() -> pulumi.Output[None]:
        program = run()
        result["program"] = program
        outs = {k: pulumi.Output.from_input(v) for k, v in program.outputs.items()}

        def keep(resolved: dict[str, Any]) -> None:
            result["outputs"] = resolved
            applied.append("outputs")

        return pulumi.Output.all(**outs).apply(keep)

    go()
    assert applied == ["outputs"], "the output callback never ran"
    return Run(mocks, result["program"], result["outputs"], applied)


def run_stack_file(path: Path) -> Run:
    config, secrets = read_stack(path)
    return run_program(config, secrets, stack_name(path))


# --- recorded inputs -> manifests ------------------------------------------------------------

SIG_KEY = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc._special_sig_key
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # pulumi.runtime.rpc._special_secret_sig


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def unsecret(value: Any) -> Any:
    """Strip the secret wrappers the SDK puts around secret inputs."""
    if is_secret(value):
        return unsecret(value["value"])
    if isinstance(value, dict):
        return {k: unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsecret(v) for v in value]
    return value


def _clean(value: Any) -> Any:
    if is_secret(value):
        return _clean(value["value"])
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def manifest(rec: Recorded) -> dict[str, Any]:
    """``kubernetes:apps/v1:DaemonSet`` inputs -> the object kubectl would send."""
    _, group_version, kind = rec.typ.split(":")
    group, _, version = group_version.partition("/")
    api_version = version if group == "core" else f"{group}/{version}"
    body: dict[str, Any] = _clean(rec.inputs)
    body["apiVersion"] = api_version
    body["kind"] = kind
    return body


def kubernetes_objects(mocks: RecordingMocks) -> list[dict[str, Any]]:
    return [manifest(r) for r in mocks.resources
            if r.typ.startswith("kubernetes:") and not r.typ.startswith("pulumi:providers")]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def run_components(build: Any, stack: str = "unit") -> tuple[RecordingMocks, dict[str, Any]]:
    """Run ``build() -> {name: Input}`` under mocks (preview=False); resolve the dict."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False)
    pulumi.runtime.set_all_config({}, [])
    result: dict[str, Any] = {}

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def go() -> pulumi.Output[None]:
        outs = {k: pulumi.Output.from_input(v) for k, v in build().items()}
        return pulumi.Output.all(**outs).apply(result.update)

    go()
    assert result or not build, "the output callback never ran"
    return mocks, result


def registered_urns() -> list[str]:
    monitor = pulumi.runtime.settings.get_monitor()
    return sorted(monitor.get_registered_resources())  # type: ignore[union-attr]
