"""Generic kubelet DRA machinery: plugin registration, the DRA v1 node service, the prepared-claim
checkpoint, reading claims and publishing ResourceSlices. Knows nothing about qaic."""
