"""Node labels without API access: a Node Feature Discovery `local` source feature file.

nfd-worker reads every file in its features.d directory (one `<namespace>/<name>[=<value>]`
per line, `#` comments, at most 64 KiB, dot files ignored) and nfd-master turns the lines
into node labels. Label keys and values must be valid Kubernetes label names: a DNS-subdomain
prefix, a name of at most 63 characters of `[A-Za-z0-9._-]` that begins and ends
alphanumeric, and a value of the same form (or empty). `kubernetes.io` namespaces are denied
by nfd-master, so we use `qualcomm.com/`, the domain of our resource names.

`sku-source` is the weakest evidence behind any SoC's SKU on the node (qaic-util > override >
sibling > topology), so `topology` tells a scheduler or an operator that the SKU labels (and
resources) are guesses: no qaic-util answered and no override named the SoC.

Labels describe hardware and driver, never health: SoC counts include SoCs that are being
reset, so labels do not churn while health flips (kubelet's device health covers that).

With no SoCs and no legacy device nodes the file is removed, not rewritten with
`present=false`: nfd-master then drops every `qualcomm.com/qaic.*` label, so a node without
the hardware looks like any other node and `Exists` selectors stay correct.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

from .inventory import NodeState
from .model import SkuSource
from .resources import BASE, DOMAIN

log = logging.getLogger(__name__)

PREFIX = f"{DOMAIN}/{BASE}"  # qualcomm.com/qaic
ACCEL = "accel"  # the upstream (drivers/accel/qaic) driver: /dev/accel/accelN
LEGACY = "legacy"  # the out-of-tree driver's /dev/qaic_aic100_N style nodes
_LEGACY_NODE = re.compile(r"qaic_aic\d+_\d+")
NFD_FILE_LIMIT = 64 * 1024  # nfd-worker ignores larger feature files

# Kubernetes label syntax (apimachinery IsQualifiedName / IsValidLabelValue).
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def valid_label(key: str, value: str) -> bool:
    """Would nfd-master accept `key=value` as a node label?"""
    prefix, sep, name = key.rpartition("/")
    if not sep or len(prefix) > 253:
        return False
    if not all(_DNS_LABEL.fullmatch(p) for p in prefix.split(".")):
        return False
    if prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"):
        return False
    return bool(_LABEL_NAME.fullmatch(name)) and (value == "" or bool(_LABEL_NAME.fullmatch(value)))


def legacy_nodes(dev_root: Path) -> list[str]:
    """The old driver's device nodes (it has no accel class, so only /dev shows it)."""
    try:
        return sorted(n for n in os.listdir(dev_root) if _LEGACY_NODE.fullmatch(n))
    except OSError:
        return []


def labels(state: NodeState, dev_root: Path) -> dict[str, str]:
    """The labels for this node; empty when there is nothing Cloud AI 100 on it.

    `driver` is `accel` when SoCs were found (they are only found through the accel class,
    which only the upstream driver registers), else `legacy` when /dev has the old driver's
    nodes; the plugin cannot serve a legacy node, and the label tells operators why.
    """
    if not state.socs:
        legacy = legacy_nodes(dev_root)
        if not legacy:
            return {}
        # SKUs and cards come from the upstream driver's sysfs, so a legacy node has counts only.
        return {
            f"{PREFIX}.present": "true",
            f"{PREFIX}.driver": LEGACY,
            f"{PREFIX}.socs": str(len(legacy)),
        }
    cards: set[str] = set()
    sku_socs: dict[str, int] = defaultdict(int)
    sku_cards: dict[str, set[str]] = defaultdict(set)
    for s in state.socs:
        # a grouping only PCIe topology suggests is not counted as one card (it is offered
        # as single SoCs too); firmware or an override makes it one
        card = s.soc.card_id if s.soc.card_certain else s.soc.pci_address
        cards.add(card)
        sku = s.sku.sku.value
        sku_socs[sku] += 1
        sku_cards[sku].add(card)
    out = {
        f"{PREFIX}.present": "true",
        f"{PREFIX}.driver": ACCEL,
        f"{PREFIX}.socs": str(len(state.socs)),
        f"{PREFIX}.cards": str(len(cards)),
    }
    for sku in sorted(sku_socs):
        out[f"{PREFIX}.sku.{sku}"] = "true"
        out[f"{PREFIX}.sku.{sku}.socs"] = str(sku_socs[sku])
        out[f"{PREFIX}.sku.{sku}.cards"] = str(len(sku_cards[sku]))
    weakest = SkuSource.weakest(s.sku.source for s in state.socs)
    if weakest is not None:
        out[f"{PREFIX}.sku-source"] = weakest.value
    return out


def render(values: dict[str, str]) -> str:
    bad = [f"{k}={v}" for k, v in values.items() if not valid_label(k, v)]
    if bad:
        raise ValueError(f"invalid NFD labels: {', '.join(bad)}")
    lines = [f"{k}={v}\n" for k, v in values.items()]
    return "# Written by qaic-device-plugin; rewritten when the node's SoCs change.\n" + "".join(
        lines
    )


def read_bounded(path: Path, limit: int = NFD_FILE_LIMIT) -> str | None:
    """The file's text, or None when absent, unreadable or larger than we ever write."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        return None
    return data.decode("utf-8", errors="replace")


def replace_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write `text` to `path` atomically unless it already holds exactly that.

    The temporary file is a dot file in the same directory (so the rename is atomic and
    watchers that skip dot files, like nfd-worker and CDI registries, never see it half
    written) and is fsynced before the rename. True when the file was (re)written.
    """
    if read_bounded(path, max(NFD_FILE_LIMIT, len(text.encode()))) == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def remove_if_present(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class NfdFeatureFile:
    """Keeps `<directory>/<name>` equal to the node's labels."""

    def __init__(self, directory: Path, name: str = "qaic") -> None:
        if not name or name.startswith(".") or "/" in name:
            raise ValueError(f"invalid feature file name {name!r}: nfd-worker skips dot files")
        self.path = Path(directory) / name

    def update(self, state: NodeState, dev_root: Path) -> bool:
        """Rewrite the file if its content would change; True when it was written or removed.

        A write failure (read-only mount, full disk) is logged and retried on the next call,
        never raised: labels must not take device serving down with them.
        """
        values = labels(state, dev_root)
        try:
            if not values:
                changed = remove_if_present(self.path)
            else:
                changed = replace_if_changed(self.path, render(values))
        except OSError as e:
            log.warning(
                "NFD feature file not written",
                extra={"event": "nfd_write_failed", "path": str(self.path), "error": str(e)},
            )
            return False
        if changed:
            log.info(
                "NFD feature file updated" if values else "NFD feature file removed",
                extra={"event": "nfd_updated", "path": str(self.path), "labels": values},
            )
        return changed
