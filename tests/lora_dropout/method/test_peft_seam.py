"""The seam: what lora_dropout assumes about peft internals, checked against the pinned peft."""

import re
from importlib.metadata import version
from pathlib import Path

import torch

from lora_dropout.method.peft_seam import find_lora_sites
from tests.tiny import tiny_adalora, tiny_lora


def test_installed_peft_is_the_pinned_one():
    pyproject = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    pinned = re.search(r'"peft==([^"]+)"', pyproject).group(1)
    assert version("peft") == pinned


def test_sites_expose_factors_and_delta_weight_as_peft_defines_them():
    model = tiny_lora()
    sites = find_lora_sites(model)
    assert [s.module_name.split(".")[-1] for s in sites] == ["query", "value"] * 2
    for site in sites:
        A, B = site.factors()
        assert A.shape == (site.layer.r[site.adapter], site.in_features)
        assert B.shape == (site.out_features, site.layer.r[site.adapter])
        torch.testing.assert_close(site.delta_weight(), B @ A * site.layer.scaling[site.adapter])
        assert [n.split(".")[-2 if n.endswith("weight") else -1] for n, _ in site.trainable_factors()] == [
            "default", "default"
        ]


def test_adalora_sites_fold_lambda_into_the_input_factor():
    model = tiny_adalora()
    for site in find_lora_sites(model):
        layer, a = site.layer, site.adapter
        A, B = site.factors()
        torch.testing.assert_close(A, layer.lora_A[a] * layer.lora_E[a])
        expected = B @ A * layer.scaling[a] / (layer.ranknum[a] + 1e-5)
        torch.testing.assert_close(site.delta_weight(), expected)
