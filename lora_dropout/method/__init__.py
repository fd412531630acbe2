"""The mechanism of LoRA Dropout and nothing else: masks (Eq. 5), the peft seam, applying them to a
peft model, the N-instance objective (Eq. 7), the test-time ensemble (Eq. 8), per-example losses,
save/load and the transformers Trainer. Imports no other part of the project."""
