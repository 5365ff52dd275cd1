"""Serve the draw-and-predict page of a trained run on this machine.

  pip install -e '.[demo]'
  python -m charjax.demo --workdir runs/consonants            # http://127.0.0.1:8000
  python -m charjax.demo --svc runs/study/exp3/svc/svc_vowels.npz --port 8080

Draw with the mouse, a pen or a finger: the top-5 classes (glyph, Latin name, probability;
for an SVC the share of one-vs-one votes) and the input the network saw update as you
draw. `--host 0.0.0.0` serves other machines too (the page has no authentication).
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax import predict
from charjax import progress
from charjax import runs


def main(argv):
  progress.plain_logs()  # no Orbax or TFDS INFO lines around the answer
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not (flags.FLAGS.workdir or flags.FLAGS.svc):
    raise app.UsageError('Give --workdir (a trained run) or --svc (a saved SVC).')
  try:
    import uvicorn  # pylint: disable=g-import-not-at-top
    from charjax.demo import app as demo_app  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    sys.exit(f'charjax: the demo needs its extra: pip install -e \'.[demo]\' ({e})')
  try:
    classifier = predict.load_classifier(flags.FLAGS.workdir, flags.FLAGS.svc)
  except (runs.RunError, checkpointing.CheckpointError, configuration.ConfigError,
          ValueError, OSError, KeyError) as e:
    sys.exit(f'charjax: cannot load the classifier: {e}')
  predictor = demo_app.Predictor(classifier, crop=flags.FLAGS.crop,
                                 margin=flags.FLAGS.crop_margin)
  web = demo_app.create_app(predictor, score_label='vote share' if flags.FLAGS.svc
                            else 'probability')
  print(f'charjax demo: http://{flags.FLAGS.host}:{flags.FLAGS.port}/  (Ctrl-C stops)',
        flush=True)
  uvicorn.run(web, host=flags.FLAGS.host, port=flags.FLAGS.port, log_level='warning')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A finished training run.')
  flags.DEFINE_string('svc', None, 'An SVC saved by charjax.study.specialise (svc_<subset>.npz).')
  flags.DEFINE_string('host', '127.0.0.1', 'Address to serve on.')
  flags.DEFINE_integer('port', 8000, 'Port to serve on.')
  flags.DEFINE_bool('crop', True, 'Crop each drawing or upload to its character first '
                    '(charjax.predict --crop).')
  flags.DEFINE_float('crop_margin', 0.04, 'Margin around the cropped ink, as a fraction of '
                     'its longer side.')
  cli.run(main)
