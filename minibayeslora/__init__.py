"""minibayeslora: the companion package of the course, from LoRA to Bayesian LoRA.

Importing the package is cheap and has one side effect, below; import the submodules you need:
``from minibayeslora import config, data, backbones``.
"""

import logging

__version__ = "0.1.0"

# bitsandbytes ≥ 0.50.2, imported by peft and transformers whenever it is installed, logs a warning on CPUs with
# AVX512-BF16 asking to download a kernel from the hub. The course never downloads at run time, and the line on
# stderr makes nbgrader score a passing test cell zero, so that one logger only reports errors.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
