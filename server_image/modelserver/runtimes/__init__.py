"""Loading and calling a model: runtime, forest and linear fast paths, batcher; imports core."""
