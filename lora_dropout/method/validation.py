"""Validation of counts, shared by every config and entry point of `lora_dropout` (and `analysis`).

It lives in `method` because `method` imports no other part of the project: everything above it can
use it. Messages name the field and the bad value, in one form everywhere.
"""

from __future__ import annotations

import numbers


def check_count(name: str, value: object, *, minimum: int = 1, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum`` (None too when ``optional``).

    ``bool`` is refused although it subclasses ``int`` (``n_instances=True`` is a mistake, not 1);
    numpy integers are accepted.

    >>> check_count("n_instances", 4)
    >>> check_count("n_instances", 0)
    Traceback (most recent call last):
    ...
    ValueError: n_instances=0 must be an integer >= 1
    >>> check_count("eval_every", None, minimum=0, optional=True)
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = f"None or an integer >= {minimum}" if optional else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} must be {allowed}")
