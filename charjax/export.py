"""Export a trained run's network for other runtimes: StableHLO (`jax.export`) or ONNX.

  python -m charjax.export --workdir runs/consonants --format stablehlo --out consonants.jaxexport
  python -m charjax.export --workdir runs/consonants --format onnx --out consonants.onnx

The exported function maps a batch of model inputs, float32 `(batch, S, S, 1)` with bright
ink on a dark ground in [0, 1] (what `charjax.predict.to_input` makes from an image file),
to class probabilities `(batch, classes)`. The batch size is free in both formats; the
parameters of the best-validation checkpoint are constants inside the file, so nothing of
charjax is needed to run it. The convolutions are XLA's (`conv_impl='xla'`): charjax's
native CPU kernels are custom calls that no other runtime has. Beside the file, `<out>.json`
records the class names, the input size and the run it came from.

Running an export (see docs/export.md):

  from jax import export
  import numpy as np
  exported = export.deserialize(bytearray(open('consonants.jaxexport', 'rb').read()))
  probabilities = exported.call(np.zeros((8, 36, 36, 1), np.float32))

  import onnxruntime as ort
  session = ort.InferenceSession('consonants.onnx')
  probabilities = session.run(None, {'images': np.zeros((8, 36, 36, 1), np.float32)})[0]
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from charjax import checkpointing
from charjax import cli
from charjax import configuration
from charjax import progress
from charjax import runs
from charjax import train

FORMATS = ('stablehlo', 'onnx')
# Platforms a StableHLO export is lowered for (it runs on any of them).
PLATFORMS = ('cpu', 'cuda', 'tpu')


class ExportError(ValueError):
  """The run cannot be exported in the format asked for."""


def inference_function(workdir):
  """(f, config, class names): f maps float32 (N, S, S, 1) inputs to probabilities, with the
  run's best parameters closed over and XLA's convolution."""
  config, _, state, class_names = runs.restore_best(workdir)
  xla_config = config.copy_and_resolve_references()
  with xla_config.unlocked():
    xla_config.conv_impl = 'xla'
  model = train.create_model(xla_config, len(class_names))
  params = jax.tree.map(np.asarray, state.params)

  def probabilities(images):
    logits = model.apply({'params': params}, images, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return probabilities, config, class_names


def export_stablehlo(workdir, out, platforms=PLATFORMS) -> dict:
  """Writes the serialized `jax.export.Exported` of the run to `out` (batch size free)."""
  f, config, names = inference_function(workdir)
  s = config.image_size
  batch, = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, s, s, 1), jnp.float32)
  exported = jax.export.export(jax.jit(f), platforms=platforms)(spec)
  pathlib.Path(out).write_bytes(exported.serialize())
  return _write_sidecar(out, 'stablehlo', workdir, config, names,
                        platforms=list(exported.platforms))


def export_onnx(workdir, out) -> dict:
  """Writes the run as an ONNX model to `out` (`charjax.jaxpr_onnx`; input 'images',
  output 'probabilities', batch size free)."""
  try:
    import onnx  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ExportError('ONNX export needs the onnx package: pip install -e \'.[export]\'') from None
  from charjax import jaxpr_onnx  # pylint: disable=g-import-not-at-top
  f, config, names = inference_function(workdir)
  s = config.image_size
  try:
    model = jaxpr_onnx.to_onnx(f, (1, s, s, 1))
  except jaxpr_onnx.UnsupportedPrimitive as e:
    raise ExportError(f'model {config.model.name} cannot be written as ONNX: {e}') from None
  pathlib.Path(out).write_bytes(model.SerializeToString())
  return _write_sidecar(out, 'onnx', workdir, config, names, opset=jaxpr_onnx.OPSET)


def _write_sidecar(out, fmt: str, workdir, config, names, **extra) -> dict:
  meta = {'format': fmt, 'workdir': str(pathlib.Path(workdir).resolve()),
          'model': config.model.name, 'image_size': config.image_size,
          'input': f'float32 (batch, {config.image_size}, {config.image_size}, 1), bright ink '
                   'on dark in [0, 1] (charjax.predict.to_input)',
          'output': 'float32 (batch, classes) probabilities', 'class_names': names,
          'jax': jax.__version__, **extra}
  pathlib.Path(str(out) + '.json').write_text(json.dumps(meta, indent=2, ensure_ascii=False))
  return meta


def main(argv):
  progress.plain_logs()  # no Orbax or TFDS INFO lines around the answer
  del argv
  fmt, out = flags.FLAGS.format, flags.FLAGS.out
  if fmt not in FORMATS:
    raise app.UsageError(f'--format must be one of {", ".join(FORMATS)}.')
  try:
    if fmt == 'stablehlo':
      export_stablehlo(flags.FLAGS.workdir, out)
    else:
      export_onnx(flags.FLAGS.workdir, out)
  except (ExportError, runs.RunError, checkpointing.CheckpointError,
          configuration.ConfigError) as e:
    sys.exit(f'charjax: {e}')
  print(f'Wrote {out} ({pathlib.Path(out).stat().st_size:,} bytes) and {out}.json')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A finished training run.', required=True)
  flags.DEFINE_enum('format', 'stablehlo', FORMATS, 'What to write.')
  flags.DEFINE_string('out', None, 'Output file.', required=True)
  cli.run(main)
