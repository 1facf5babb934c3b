"""minibayeslora: the companion package of the course, from LoRA to Bayesian LoRA.

Importing the package is cheap and has no side effects; import the submodules you need:
``from minibayeslora import config, data, backbones``.
"""

__version__ = "0.1.0"
