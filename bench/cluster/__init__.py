"""Cluster simulation: 8 nodes of 16 Ultra cards under a model of kube-scheduler, where 4-SoC
jobs land in device-plugin mode and in DRA mode (`python -m bench.cluster`; not part of
`python -m bench`). simulation.py holds the model, the runs and the Markdown table."""
