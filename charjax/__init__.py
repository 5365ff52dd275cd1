"""charjax: handwritten Devanagari character classification in JAX/Flax."""

from charjax import cpu_flags
from charjax import host_memory

cpu_flags.apply()
host_memory.apply()

__version__ = '0.1.0'
