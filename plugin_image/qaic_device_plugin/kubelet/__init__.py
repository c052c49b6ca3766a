"""Generic kubelet device-plugin machinery (v1beta1): knows nothing about qaic."""
