"""charjax.export: StableHLO and ONNX files that reproduce the run's predictions."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from charjax import export
from charjax import predict
from charjax.data import input_pipeline
from charjax import runs

REPO = __import__('pathlib').Path(__file__).resolve().parents[1]


def test_split_inputs(workdir, split='test'):
  """(inputs, labels) of a run's split, and charjax's own probabilities for them."""
  config = runs.load_config(workdir)
  _, data = input_pipeline.load_splits(config)
  classifier = predict.load_classifier(str(workdir), None)
  return data.images[split], data.labels[split], np.asarray(classifier.scores(data.images[split]))


test_split_inputs.__test__ = False  # a helper, not a test


def parity(expected: np.ndarray, got: np.ndarray) -> dict:
  return {'images': int(len(expected)),
          'max_abs_probability_difference': float(np.max(np.abs(expected - got))),
          'top1_agreement': float(np.mean(expected.argmax(-1) == got.argmax(-1)))}


RUN_WITH_JAX_ONLY = textwrap.dedent('''
    import json, sys
    import numpy as np
    from jax import export
    exported = export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))
    x = np.load(sys.argv[2])
    out = {'full': np.asarray(exported.call(x)).tolist(),
           'first3': np.asarray(exported.call(x[:3])).tolist(),
           'charjax_imported': any(m.startswith('charjax') for m in sys.modules)}
    print(json.dumps(out))
''')


def check_stablehlo(workdir, tmp_path) -> dict:
  inputs, _, expected = test_split_inputs(workdir)
  out = tmp_path / 'model.jaxexport'
  meta = export.export_stablehlo(str(workdir), out)
  assert meta['class_names'] == runs.load_results(workdir)['class_names']
  assert set(meta['platforms']) == set(export.PLATFORMS)
  np.save(tmp_path / 'x.npy', inputs)
  # A fresh process with the file, numpy and JAX only: no charjax module is imported.
  proc = subprocess.run([sys.executable, '-c', RUN_WITH_JAX_ONLY, str(out), str(tmp_path / 'x.npy')],
                        cwd=tmp_path, capture_output=True, text=True,
                        env={'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert not result['charjax_imported']
  got = np.array(result['full'], np.float32)
  np.testing.assert_allclose(np.array(result['first3']), got[:3], atol=1e-6)  # any batch size
  figures = parity(expected, got)
  assert figures['top1_agreement'] == 1.0 and figures['max_abs_probability_difference'] < 1e-4
  return figures


def check_onnx(workdir, tmp_path) -> dict:
  ort = pytest.importorskip('onnxruntime')
  pytest.importorskip('onnx')
  inputs, _, expected = test_split_inputs(workdir)
  out = tmp_path / 'model.onnx'
  export.export_onnx(str(workdir), out)
  session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  got = session.run(None, {name: inputs})[0]
  np.testing.assert_allclose(session.run(None, {name: inputs[:3]})[0], got[:3], atol=1e-6)
  figures = parity(expected, got)
  assert figures['top1_agreement'] == 1.0 and figures['max_abs_probability_difference'] < 1e-4
  return figures


def test_stablehlo_export_runs_with_jax_alone_and_matches(reference_run, tmp_path):
  check_stablehlo(reference_run[1], tmp_path)


def test_onnx_export_runs_in_onnxruntime_and_matches(reference_run, tmp_path):
  check_onnx(reference_run[1], tmp_path)


@pytest.mark.slow  # the real numerals network (15 epochs) on its 432 test images
@pytest.mark.parametrize('fmt', ['stablehlo', 'onnx'])
def test_exports_of_a_real_run_match_on_its_test_split(real_numerals_run, tmp_path, fmt):
  figures = (check_stablehlo if fmt == 'stablehlo' else check_onnx)(real_numerals_run[0], tmp_path)
  print(f'{fmt} parity on the real numerals test split: {json.dumps(figures)}')


@pytest.mark.slow  # starts the command
def test_export_command(reference_run, tmp_path):
  out = tmp_path / 'net.jaxexport'
  proc = subprocess.run([sys.executable, '-m', 'charjax.export', f'--workdir={reference_run[1]}',
                         '--format=stablehlo', f'--out={out}'], cwd=REPO, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert out.stat().st_size > 0
  assert json.loads((tmp_path / 'net.jaxexport.json').read_text())['format'] == 'stablehlo'
  proc = subprocess.run([sys.executable, '-m', 'charjax.export', f'--workdir={tmp_path}',
                         '--format=onnx', f'--out={tmp_path / "x.onnx"}'], cwd=REPO,
                        capture_output=True, text=True)
  assert proc.returncode == 1 and 'not a charjax run' in proc.stderr
