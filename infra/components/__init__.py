"""ComponentResources of the qaic-k8s program."""
