"""Live runs against the plugin process as deployed (issue 6): the `qaic-device-plugin` console
script on a fake 16-Ultra node, driven by the kubelet simulator over real Unix sockets.

- job.py: what `python -m bench` runs (quality sweep, then the live figures) and prints;
- main_process.py: the main run (RSS, Allocate/GetPreferredAllocation latency, cross-check);
- events.py: device-node flips, resets, sysfs-only signals, kubelet restarts;
- starts_and_snapshots.py: process starts, shares, ListAndWatch snapshots of large nodes
  (snapshot_server.py is the subprocess that serves them);
- base.py: counts, samples, the inotify floor and the plugin process on the node;
- rows.py, table.py: issue 6's table.
"""
