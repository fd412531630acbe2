"""What a run learns: the `Task` protocol (prepare the data, the per-example loss, scoring) and its two
implementations, sequence classification and instruction tuning; the data loaders and the embedded
assets (model and data files shipped in wheels).

=================  ==============================================================================
base               the `Task` protocol, the split protocols, and the registry `TASKS` / `task_for`
classification     `EncodedSplit`, `encode_split` and the classification task
instruction        the instruction-tuning task: its splits and the sentiment demo
alpaca             Alpaca records: the prompt, `load_alpaca`, encoding with response-only labels
choices            multiple-choice scoring with the test-time ensemble (`score_choices`)
splits             `TextSplits` and the one split pipeline every loader uses
data               the loaders: embedded Rotten Tomatoes, local files, Hugging Face datasets
tables             reading CSV/TSV/JSON-lines files and checking their columns
assets, gguf       the embedded model and data files; the GGUF causal LM as a transformers folder
=================  ==============================================================================
"""
