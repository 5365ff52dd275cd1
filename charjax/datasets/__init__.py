"""TFDS builders of the Devanagari datasets and the class tables they use."""

from charjax.datasets.dhcd import Dhcd
from charjax.datasets.nhcd import Nhcd
