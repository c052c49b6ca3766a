"""Stack matrix for CI: every stack file (preview), those with ``ciDeploy: true`` (up), and
those holding ``secure:`` values (they open with the PULUMI_CONFIG_PASSPHRASE repository
secret; the others were made with the empty passphrase). The ``e2e`` stack is left out: it
applies to whatever cluster $KUBECONFIG names and belongs to `make e2e`.

    python -m infra.ci_stacks            # {"all": [...], "deploy": [...], "secret": [...]}
    python -m infra.ci_stacks --github   # also writes all=/deploy= to $GITHUB_OUTPUT

Only the standard library and PyYAML, so the matrix job needs no full install.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STACKS_DIR = ROOT / "stacks"
PROJECT = str(yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["name"])


def _truthy(value: object) -> bool:
    return value is True or value == "true"


LOCAL_ONLY = frozenset({"e2e"})


def _has_secrets(config: dict[str, object]) -> bool:
    return any(isinstance(v, dict) and "secure" in v for v in config.values())


def stack_matrix(stacks_dir: Path = STACKS_DIR) -> dict[str, list[str]]:
    all_stacks: list[str] = []
    deploy: list[str] = []
    secret: list[str] = []
    for path in sorted(stacks_dir.glob("Pulumi.*.yaml")):
        name = path.name[len("Pulumi."):-len(".yaml")]
        if name in LOCAL_ONLY:
            continue
        data = yaml.safe_load(path.read_text()) or {}
        config = data.get("config") or {}
        all_stacks.append(name)
        if _truthy(config.get(f"{PROJECT}:ciDeploy")):
            deploy.append(name)
        if _has_secrets(config):
            secret.append(name)
    return {"all": all_stacks, "deploy": deploy, "secret": secret}


def main(argv: list[str]) -> int:
    matrix = stack_matrix()
    print(json.dumps(matrix))
    if "--github" in argv:
        with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as out:
            for key, value in matrix.items():
                out.write(f"{key}={json.dumps(value)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
