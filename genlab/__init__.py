"""genlab: train, sample, score and compare generative models of images behind one API."""

__version__ = "0.1.0"

from genlab.models import MODELS, Unsupported, create, load  # noqa: E402
from genlab.train import fit  # noqa: E402

__all__ = ["MODELS", "Unsupported", "create", "fit", "load", "__version__"]
