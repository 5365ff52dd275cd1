"""charjax: handwritten Devanagari character classification in JAX/Flax.

Importing charjax changes nothing in the process: the CPU settings its commands use are
applied by `charjax.runtime.cpu_settings.apply()` (called by every `python -m charjax.*` entry point).
"""

__version__ = '0.1.0'
