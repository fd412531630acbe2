"""The toolkit's own PAC-Bayes dropout certificate on a trained run (docs/certificate.md): not a probe of the
paper's theory but a bound of its own, so it has its own sub-package beside `lora_dropout.probes`.

Modules: `noise` (counter-based Gaussian noise of the posterior), `posterior` (posterior draws in one batched
forward pass), `prior_distance` (the distances in ``KL(Q || P)``), `units` (the level the bound counts examples
at: groups or rows), `certified_set` (which examples are certified, and the data check), `measure`
(``lora-dropout certify``: ``certificates.parquet``), `learned` (a posterior learned by minimising the bound).
"""
