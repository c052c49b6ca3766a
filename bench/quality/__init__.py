"""Allocation quality (issue 6): 1-, 2- and 4-SoC jobs arriving and leaving on one 16-Ultra node,
our preferred allocation against kubelet's choices and first-fit. Pure simulation, no process.

- simulation.py: the node, the job mix, the event stream, the policies and the outcome;
- report.py: the tables (text and Markdown) at every offered load.

The live run (bench/live) takes the node and the recorded requests from here, and the cluster
simulation (bench/cluster) the node and the job mix.
"""
