"""`python -m charjax.study --workdir runs/study [--quick]`: the whole study (see `experiments`)."""

from charjax import cli
from charjax.study import experiments

if __name__ == '__main__':
  experiments.define_flags()
  cli.run(experiments.main)
