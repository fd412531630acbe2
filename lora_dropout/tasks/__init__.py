"""What a run learns: the `Task` protocol (prepare the data, the per-example loss, scoring) and its two
implementations, sequence classification and instruction tuning; the data loaders and the embedded
assets (model and data files shipped in wheels)."""
