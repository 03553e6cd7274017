"""The supervisor, its workers, their probes and readiness: wires together every part below it."""
