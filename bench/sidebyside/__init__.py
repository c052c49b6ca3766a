"""Side by side with the Go peer (issue 11): our plugin and Intel's NPU device plugin on one fake
node, one kubelet simulator, one run, interleaved, each next to the floors of that run.

- job.py: what `python -m bench` runs (find the peer, measure, print the table) and records;
- measure.py: the run itself (starts, import profile, idle CPU and RSS, Allocate);
- events.py: the two event figures (a device reset, a kubelet restart);
- procs.py: both plugin processes and what /proc says about them;
- peer.py: the Go peer binary (found or built) and its process;
- pb_floor_server.py: the protobuf floor of the Allocate figure (a subprocess);
- model.py: the counts and the figures collected; report.py: the rows, table and profile.
"""
