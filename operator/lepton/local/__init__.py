"""The local backend: runs rendered workloads as processes on this machine."""
