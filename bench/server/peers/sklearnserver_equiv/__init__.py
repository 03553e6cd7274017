"""KServe's sklearn model server, rebuilt for the benchmark from KServe's public packages."""
