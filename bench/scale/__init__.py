"""The scale run (issue 22): the real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler v1.37.2) with N kwok fake nodes of 16 SoCs, device-plugin mode against DRA mode.

Modules, one job each: kwok.py (find or build kwok), control_plane.py (start and stop the real
components), manifests.py (nodes, pods, classes, claim templates), publishers.py (our real
SlicePublisher per node, fed by the real discovery of a fake node), kube.py (the bench's own
HTTP/2 client), tracker.py (what the watches say happened to each job), load.py (create and
delete jobs to hold a load), procstat.py (CPU and RSS from /proc), measure.py (one node count in
one mode), summary.py (a phase's figures), report.py (the table), plot.py (the SVG), job.py
(the command line).
"""
