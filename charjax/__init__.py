"""charjax: handwritten Devanagari character classification in JAX/Flax."""

from charjax import cpu_flags

cpu_flags.apply()

__version__ = '0.1.0'
