"""Research scripts: measurements that chose the recipes (GPU sweeps, memory probes), not user tools."""
