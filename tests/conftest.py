"""Suite-wide settings: offline hub, one torch thread (tiny models run 10x slower on two), tiny models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:  # the bounds tests must also run where torch is absent
    import torch
except ImportError:  # pragma: no cover
    torch = None
else:
    torch.set_num_threads(1)


if torch is not None:
    import pytest

    @pytest.fixture
    def all_cores():
        """Every core for a test that trains the real pretrained model (one thread suits tiny models only)."""
        before = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        yield
        torch.set_num_threads(before)
