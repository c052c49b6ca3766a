"""How the cluster harness reads `kubectl get --watch -o json` (cluster/watch.json_objects,
behind cluster.watch.Watch, cluster.inspect.PodWatch and the DRA roll's pod watch): every
object kubectl prints, as soon as it is complete, whatever lines the pipe delivers."""

from __future__ import annotations

import json
import subprocess
import threading
from itertools import islice

import pytest

from cluster.watch import json_objects
from e2e.apiserver import TOOLS, ApiServer, find_binaries

KUBECTL = next(iter(sorted(TOOLS.glob("kubernetes-*/bin/kubectl"))), None)


def test_objects_split_over_lines_or_sharing_one_come_out_whole_and_in_order() -> None:
    objs = [{"type": "ADDED", "object": {"metadata": {"name": f"p{i}"}, "s": "{ }"}}
            for i in range(3)]
    text = json.dumps(objs[0], indent=4) + "\n" + json.dumps(objs[1]) + json.dumps(objs[2])
    chunks = [text[i:i + 7] for i in range(0, len(text), 7)] + ["\n"]
    assert list(json_objects(chunks)) == objs
    assert list(json_objects(["{\"a\": 1", "}\n", "  \n", "{\"b\""])) == [{"a": 1}]


@pytest.mark.e2e
@pytest.mark.skipif(find_binaries() is None or KUBECTL is None,
                    reason="kube-apiserver/etcd/kubectl not built")
def test_a_real_kubectl_watch_yields_each_event(api: ApiServer) -> None:
    """The real kubectl's output: the initial list, then each change, each decoded as soon as
    kubectl prints it (the watch is read while it runs)."""
    base = [str(KUBECTL), "--kubeconfig", str(api.kubeconfig)]
    for name in ("w1", "w2"):
        subprocess.run([*base, "create", "configmap", name], check=True, capture_output=True)
    listed = subprocess.run([*base, "get", "configmaps", "-n", "default", "-o", "name"],
                            check=True, capture_output=True, text=True).stdout.split()
    proc = subprocess.Popen([*base, "get", "configmaps", "-n", "default", "--watch",
                             "--output-watch-events", "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stop = threading.Timer(30, proc.terminate)  # a missing event ends the stream: a failure
    stop.start()
    try:
        assert proc.stdout is not None
        events = json_objects(proc.stdout)
        first = [e["object"]["metadata"]["name"] for e in islice(events, len(listed))]
        assert sorted(f"configmap/{n}" for n in first) == sorted(listed)
        assert {"w1", "w2"} <= set(first)
        subprocess.run([*base, "delete", "configmap", "w1"], check=True, capture_output=True)
        deleted = next(events)
        assert (deleted["type"], deleted["object"]["metadata"]["name"]) == ("DELETED", "w1")
    finally:
        stop.cancel()
        proc.terminate()
        proc.wait(10)
