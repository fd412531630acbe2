"""The run-directory schema: every file, table and column declared once, with its meaning.

`TABLES` declares the parquet and jsonl tables (columns, unique key, producing command), `META_FIELDS`
the fields of ``meta.json`` and `PRIOR_FILES` the PAC-Bayes prior folder. `bounds.runlog.io` checks a
directory against these declarations; the closed vocabularies of the columns are in
`bounds.runlog.enums`. Needs only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .enums import Space

SCHEMA_VERSION = 1

#: Parameter space of ``stability.parquet``'s ``param_distance`` (every method): the merged updates
#: ``dW_k`` of the adapted modules, the ``delta_w`` space of the probes. A bound that combines it with a
#: probe (``eta * param_distance``) must take the probe in this space.
PARAM_DISTANCE_SPACE = Space.DELTA_W.value

META_FIELDS = {
    "schema_version": "int: SCHEMA_VERSION of the writer",
    "run_id": "str: unique id, also the directory name",
    "status": "str: running (until the end), success, or failed",
    "error": "str or null: the exception (or 'interrupted') when failed",
    "config": "dict: the full resolved configuration (train, adapter, lora_dropout sections)",
    "seeds": "dict: the seeds of the init, data-order and mask streams",
    "versions": "dict: python and package versions",
    "git": "dict: commit and dirty flag of the toolkit checkout (nulls outside a checkout)",
    "device": "str: torch device the run used",
    "host": "str: machine that ran it",
    "pid": "int: process id of the writer (to tell a live run from one killed without notice)",
    "started_at": "str: ISO-8601 UTC",
    "finished_at": "str or null: ISO-8601 UTC",
    "wall_s": "float or null: wall time of the run in seconds",
    "data": "dict: data source and split sizes (TextSplits.describe())",
    "prior": "dict or null (runs before it): prior_fraction, n_prior and n_certifiable (examples the prior "
             "trained on / not), prior_steps, and the posterior phase: posterior_first_step (= prior_steps; "
             "steps.jsonl's step counts both phases), posterior_first_epoch, posterior_epochs, posterior_lr "
             "(steps.jsonl's epoch counts posterior epochs), split_level (group or row: what the prior took whole)",
    "final": "dict: metrics of the last evaluation, keyed split/predictor",
}
REQUIRED_META = ("schema_version", "run_id", "status", "config", "started_at")

#: The PAC-Bayes prior of a run (docs/certificate.md), written by ``lora-dropout train`` before the
#: posterior trains (runs from before it lack the folder). Tensor files are keyed by peft's
#: ``get_peft_model_state_dict`` names, the keys of ``adapter/adapter_model.safetensors``.
PRIOR_DIR = "prior"
#: One JSON line per ``lora-dropout certify`` measurement on a run (`append_certify_log`): its kind (``grid`` or
#: ``learned``), settings, time and result. The certificate reports split delta and delta_mc over its lines
#: (a union bound over every certificate tried on the run, docs/certificate.md "Selection").
CERTIFY_LOG = "certify_log.jsonl"
PRIOR_FILES = {
    "init.safetensors": "the trainable parameters at the seeded initialisation, before any step (the "
                        "data-free prior mean)",
    "prior.safetensors": "the prior mean trained on prior_ids (only when prior_fraction > 0): config.train.epochs "
                         "epochs at config.train.lr on the rows of the first floor(prior_fraction * G) groups of "
                         "the seeded prior order (lora_dropout.runs.train.prior_split), or of the first "
                         "floor(prior_fraction * n) rows when the data have no groups; the posterior trains from it",
    "prior.json": '{"prior_fraction": float, "level": "group"|"row", "prior_ids": [sample ids the prior trained '
                  'on], "certifiable_ids": [the other training sample ids], "prior_groups" and '
                  '"certifiable_groups" (level group): [group names], "prior_fingerprint" and '
                  '"certifiable_fingerprint": sha256 of the (sample_id, label, text) of each id list}, in the '
                  "training split's order; prior_fraction 0: prior_ids [] and certifiable_ids every training id",
}

#: A posterior learned by minimising the certificate (``lora-dropout certify --learn-posterior``,
#: `lora_dropout.certify.learned`); tensor names are those of the prior files.
LEARNED_DIR = "posterior"
LEARNED_FILES = {
    "learned.safetensors": "the learned posterior mean mu of every perturbed tensor (LoRA factors and head)",
    "learned.json": '{"prior": "init"|"trained", "prior_std_grid": [...], "tensors": {name: {"posterior_std": '
                    'sigma_g, "count": n_g, "weight": w_g (1 - p for a LoRA factor, 1 for the head), "sq_dist": '
                    "||mu_g - theta_P,g||^2}}, \"first_draw\": the first noise draw index learning used (the "
                    "certificate's Monte Carlo draws 0 .. k-1 lie below it), \"draws_used\": how many, "
                    '"n_bound", "settings", "objective" per epoch}',
}

#: Default grid of ``posterior_std`` of ``lora-dropout certify``: fixed in advance, before any data is
#: seen, so the union bound over it is valid; a run's certificates are checked against it (or against a
#: grid given as an option), never against a grid chosen from the run's own numbers.
DEFAULT_POSTERIOR_STD_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "int", "float", "str", "bool"
    description: str
    nullable: bool = False
    finite: bool = False  # values must be finite numbers (losses)
    default: Any = None  # a column added later: older tables without it read as this value


@dataclass(frozen=True)
class Table:
    """A table of the run directory: file, columns, unique key, and the command that produces it."""

    name: str
    filename: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    producer: str
    fmt: str = "parquet"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


C = Column
_RISK = (
    C("risk", "float", "mean cross-entropy of the predictor on the split (nats)", finite=True),
    C("accuracy", "float", "fraction of correct argmax predictions"),
    C("ece", "float", "expected calibration error, 15 equal-width confidence bins"),
    C("nll", "float", "mean negative log-likelihood of the predictive distribution (nats)"),
    C("brier", "float", "mean multi-class Brier score sum_k (q_k - 1[y = k])^2"),
)

#: Columns of certificates.parquet and of certificates_iid_rows.parquet.
_CERTIFICATE_COLUMNS = (
    C("posterior_std", "float", "sigma > 0: std of the Gaussian part of posterior and prior"),
    C("p", "float", "dropout_rate of the run (each entry of A and B kept with probability 1 - p)"),
    C("level", "str", "group or row: the unit the bound counts as one example (lora_dropout.certify.units)"),
    C("premise", "str", "what the level assumes (groups i.i.d., or rows i.i.d.; docs/certificate.md)"),
    C("n_bound", "int", "n_b: certified units (groups, or rows) the empirical risks are computed on: the "
                        "training rows the prior left certifiable (all for the data-free init prior), "
                        "at group level only those of groups the prior saw no row of"),
    C("n_bound_rows", "int", "training rows in the certified units"),
    C("n_test", "int", "test units (groups, or rows) the test Gibbs risks are computed on"),
    C("n_test_rows", "int", "test rows"),
    C("draws", "int", "k: posterior draws per example (per split)"),
    C("factor_sq_dist", "float", "||A - A_P||^2 + ||B - B_P||^2 over the adapted modules", finite=True),
    C("head_sq_dist", "float", "||head - head_P||^2 over the trained head (0 when none)", finite=True),
    C("kl_factor_term", "float", "(1 - p) factor_sq_dist / (2 posterior_std^2)"),
    C("kl_head_term", "float", "head_sq_dist / (2 posterior_std^2)"),
    C("kl", "float", "kl_factor_term + kl_head_term: the upper bound on KL(Q || P)"),
    C("train_gibbs_error", "float", "mean over the n_b units of the unit's mean over its rows "
                                    "and k draws of 1[argmax != label] (the Monte Carlo estimate of "
                                    "the empirical Gibbs 0-1 risk)", finite=True),
    C("train_gibbs_linear", "float", "the same unit mean of 1 - prob_label (linear loss)", finite=True),
    C("test_gibbs_error", "float", "the same 0-1 unit mean over the n_test test units and k draws "
                                   "(measured, held against the certificate)", finite=True),
    C("test_gibbs_linear", "float", "the same linear-loss mean on the test split", finite=True),
    C("holdout_gibbs_error", "float", "the hold-out baseline: the prior's own Gibbs member (its mean, LoRA Dropout "
                                      "masks, no noise) on the certified units, same draws (docs/certificate.md)",
      finite=True),
    C("holdout_test_gibbs_error", "float", "the same predictor's 0-1 mean on the test units", finite=True),
    C("prior", "str", "init (the data-free seeded initialisation, prior/init.safetensors) or trained "
                      "(prior/prior.safetensors, trained on prior/prior.json's prior_ids)"),
    C("grid_size", "int", "|grid|: posterior_std values certified together (the union bound "
                          "splits delta and delta_mc over them)"),
    C("delta", "float", "failure probability of the PAC-Bayes step, whole grid"),
    C("delta_mc", "float", "failure probability of the Monte Carlo step, whole grid"),
    C("seed", "int", "root of the posterior noise stream (the masks: the run's mask seed, the certificate's own "
                     "stream, lora_dropout.method.masks.CERTIFY_STREAM)"),
    C("passes", "int", "posterior draws per example certify made over the certified and test splits, "
                       "counted while it ran (grid_size x draws when complete)"),
    C("evaluated_draws", "int", "(row, draw) losses on the certified split at this grid point, counted "
                                "while certify ran (n_bound_rows x draws when every row was evaluated)"),
    C("data_fingerprint", "str", "sha256 of the (sample_id, label, text) of the certified rows as "
                                 "certify evaluated them (lora_dropout.tasks.splits.examples_fingerprint)"),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "steps", "steps.jsonl",
            "one line per evaluation, split and predictor; appended and flushed, so a crash loses nothing written",
            (
                C("step", "int", "optimizer steps taken when evaluated"),
                C("epoch", "float", "epochs completed when evaluated"),
                C("split", "str", "train or test"),
                C("predictor", "str", "deterministic (expected or full dW), member_mean (mean over members), "
                                      "or ensemble (Eq. 8)"),
                C("n", "int", "examples evaluated"),
                *_RISK,
                C("objective", "float", "mean Eq. 7 training loss since the previous evaluation", nullable=True),
                C("wall_s", "float", "seconds since the run started"),
            ),
            key=("step", "split", "predictor"),
            producer="lora-dropout train",
            fmt="jsonl",
        ),
        Table(
            "samples", "samples.parquet",
            "per-sample loss matrix: every evaluated example under every member, the deterministic "
            "predictor and the ensemble",
            (
                C("step", "int", "optimizer steps taken when evaluated"),
                C("split", "str", "train or test"),
                C("sample_id", "int", "stable example id of the data loader"),
                C("predictor", "str", "member, deterministic, ensemble, or full (unmasked dW; final evaluation "
                                      "only)"),
                C("instance", "int", "member index r for predictor=member, else -1"),
                C("loss", "float", "cross-entropy of this example under this predictor (nats)", finite=True),
                C("correct", "bool", "argmax prediction equals the label"),
                C("confidence", "float", "probability of the predicted class"),
            ),
            key=("step", "split", "sample_id", "predictor", "instance"),
            producer="lora-dropout train (every evaluation; --samples-every)",
        ),
        Table(
            "calibration", "calibration.parquet",
            "reliability-diagram bins: 15 equal-width confidence bins on [0, 1]; member_mean pools the "
            "predictions of all members (steps.jsonl's member_mean ECE is the mean of per-member ECEs)",
            (
                C("step", "int", "optimizer steps taken when evaluated"),
                C("split", "str", "train or test"),
                C("predictor", "str", "deterministic, member_mean, or ensemble"),
                C("bin", "int", "bin index 0..14"),
                C("lower", "float", "lower bin edge"),
                C("upper", "float", "upper bin edge"),
                C("confidence", "float", "mean confidence in the bin (NaN when empty)", nullable=True),
                C("accuracy", "float", "accuracy in the bin (NaN when empty)", nullable=True),
                C("count", "int", "predictions in the bin"),
            ),
            key=("step", "split", "predictor", "bin"),
            producer="lora-dropout train",
        ),
        Table(
            "modules", "modules.parquet",
            "realised sparsity per adapted module (site = module::adapter) at each evaluation",
            (
                C("step", "int", "optimizer steps taken"),
                C("module", "str", "site name <module path>::<adapter>"),
                C("in_features", "int", "columns of A (input features)"),
                C("out_features", "int", "rows of B (output features)"),
                C("n_masks", "int", "sampled training masks the realised values are computed from"),
                C("nominal_keep", "float", "1 - p"),
                C("keep_in", "float", "realised kept fraction of the input-feature mask (columns of A)"),
                C("keep_out", "float", "realised kept fraction of the output-feature mask (rows of B)"),
                C("nominal_sparsity", "float", "s = 2p - p^2"),
                C("dw_zero_fraction", "float", "realised zero fraction of dW_hat = diag(m_B) B A diag(m_A)"),
                C("nominal_all_dropped", "float", "probability the whole dW_hat is zero: 1-(1-p^in)(1-p^out)"),
                C("all_dropped", "float", "realised fraction of masks that zero the whole dW_hat"),
                C("dw_norm", "float", "Frobenius norm of the unmasked dW = B A * scaling"),
            ),
            key=("step", "module"),
            producer="lora-dropout train",
        ),
        Table(
            "probes", "probes.parquet",
            "curvature and Lipschitz measurements at theta(S)",
            (
                C("quantity", "str", "lipschitz_max, lipschitz_q99, lipschitz_mean, hessian_min_eig, "
                                     "hessian_max_eig, grad_norm"),
                C("space", "str", "delta_w (entries of dW) or factors (LoRA A and B)"),
                C("value", "float", "the measurement"),
                C("stderr", "float", "uncertainty of the value where one is defined", nullable=True),
                C("iterations", "int", "Lanczos iterations or samples used"),
                C("residual", "float", "Lanczos residual ||H v - lambda v|| (NaN where not applicable)",
                  nullable=True),
                C("converged", "bool", "hessian_* rows: Lanczos reached its tolerance (False: the value is the "
                                       "best unconverged estimate, the bounds treat it as not measured); True "
                                       "on the other rows, which are computed exactly"),
                C("n", "int", "training examples the probe was measured on (lipschitz_*: the examples the "
                              "max / quantile / mean is over, fewer than the run's n_train when a subset "
                              "was probed; hessian_*: those whose mean loss's Hessian was taken)"),
                C("lam", "float", "regularisation strength of the regularised loss", nullable=True),
                C("hypothesis", "str", "the predictor probed (Hypothesis): unmasked (full dW, theta(S)) or "
                                       "expected (every dW times its training mean E[m_B m_A^T], the expected "
                                       "eval mode's predictor); tables written before this column read as "
                                       "unmasked", default="unmasked"),
            ),
            key=("quantity", "space", "hypothesis"),
            producer="lora-dropout probe RUN_DIR --curvature",
        ),
        Table(
            "stability", "stability.parquet",
            "leave-one-out pairs: the removed example's loss under theta(S) and theta(S^i)",
            (
                C("sample_id", "int", "the removed training example"),
                C("method", "str", "retrain (coupled retraining), warm_start, or influence"),
                C("loss_s", "float", "loss of the example under theta(S), unmasked model (the full predictor)",
                  finite=True),
                C("loss_si", "float", "loss of the example under theta(S^i), unmasked model", finite=True),
                C("param_distance", "float", "sqrt(sum_k ||dW_k(S^i) - dW_k(S)||_F^2): distance of the merged "
                                             "updates, in the delta_w space of the probes (PARAM_DISTANCE_SPACE; "
                                             "the classification head's change is not included)",
                  nullable=True),
                C("wall_s", "float", "seconds this estimate took"),
            ),
            key=("sample_id", "method"),
            producer="lora-dropout probe RUN_DIR --stability-k K",
        ),
        Table(
            "certificates", "certificates.parquet",
            "PAC-Bayes dropout certificate measurements (docs/certificate.md; the toolkit's own): per "
            "posterior_std of a grid fixed before the data, the KL to the prior and the empirical Gibbs risks "
            "of the posterior Q (LoRA Dropout masks times N(theta, posterior_std^2 I)) from `draws` draws per "
            "example, fresh masks and noise per example and draw; at group level when the data have groups",
            _CERTIFICATE_COLUMNS,
            key=("posterior_std",),
            producer="lora-dropout certify RUN_DIR",
        ),
        Table(
            "certificates_iid_rows", "certificates_iid_rows.parquet",
            "the same measurements at row level, from the same draws, when grouped data's rows are declared i.i.d. "
            "(lora-dropout certify --assume-iid-rows)",
            _CERTIFICATE_COLUMNS,
            key=("posterior_std",),
            producer="lora-dropout certify RUN_DIR --assume-iid-rows",
        ),
        Table(
            "learned_certificates", "learned_certificates.parquet",
            "PAC-Bayes dropout certificate of a learned posterior (posterior/learned.*: mean and a std per tensor, "
            "learned by minimising the bound) against the prior at each prior_std of a grid fixed before the data; "
            "the Monte Carlo risks are measured once (they do not depend on the prior)",
            (
                C("prior_std", "float", "sigma_P > 0: std of the prior's Gaussian part (a grid point)"),
                C("p", "float", "dropout_rate of the run"),
                C("level", "str", "group or row, as in certificates.parquet"),
                C("n_bound", "int", "n_b: certified units (groups, or rows) the empirical risks are computed on"),
                C("n_bound_rows", "int", "training rows in the certified units"),
                C("n_test", "int", "test units the test Gibbs risks are computed on"),
                C("draws", "int", "k: posterior draws per example (per split), draws 0 .. k-1 of the noise stream"),
                C("kl_variance_term", "float", "sum_g w_g n_g (ln(sigma_P / sigma_g) + sigma_g^2 / (2 sigma_P^2) "
                                               "- 1/2)"),
                C("kl_distance_term", "float", "sum_g w_g ||mu_g - theta_P,g||^2 / (2 sigma_P^2)"),
                C("kl", "float", "kl_variance_term + kl_distance_term: the upper bound on KL(Q || P)"),
                C("train_gibbs_error", "float", "mean over the n_b x k draws of 1[argmax != label]", finite=True),
                C("train_gibbs_linear", "float", "mean over the n_b x k draws of 1 - prob_label", finite=True),
                C("test_gibbs_error", "float", "the same 0-1 mean over n_test x k draws on the test split",
                  finite=True),
                C("test_gibbs_linear", "float", "the same linear-loss mean on the test split", finite=True),
                C("prior", "str", "init or trained (as in certificates.parquet)"),
                C("grid_size", "int", "|grid| of prior_std (the union bound splits delta and delta_mc over it)"),
                C("delta", "float", "failure probability of the PAC-Bayes step, whole grid"),
                C("delta_mc", "float", "failure probability of the Monte Carlo step, whole grid"),
                C("seed", "int", "root of the posterior noise stream"),
            ),
            key=("prior_std",),
            producer="lora-dropout certify RUN_DIR --learn-posterior",
        ),
    )
}

