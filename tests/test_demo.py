"""charjax.demo: the page's server answers drawings and uploads, refuses bad requests with a
4xx, survives a burst of concurrent requests, and works in a real browser (Chromium)."""

import concurrent.futures
import contextlib
import io
import json
import os
import pathlib
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
from PIL import Image
import pytest

from charjax import predict
from tests import conftest

starlette = pytest.importorskip('starlette')  # pip install -e '.[demo]'
uvicorn = pytest.importorskip('uvicorn')
from charjax.demo import app as demo_app  # pylint: disable=g-import-not-at-top


@contextlib.contextmanager
def serving(workdir):
  """The demo of `workdir` served by uvicorn in a thread on a free localhost port."""
  predictor = demo_app.Predictor(predict.load_classifier(str(workdir), None))
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(demo_app.create_app(predictor), host='127.0.0.1',
                                         port=port, log_level='warning'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  for _ in range(200):
    if server.started:
      break
    time.sleep(0.05)
  try:
    yield f'http://127.0.0.1:{port}', predictor
  finally:
    server.should_exit = True
    thread.join(10)


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, dict]:
  request = urllib.request.Request(url + '/predict', data=body, method='POST',
                                   headers={'Content-Type': 'application/octet-stream'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def post_too_large(url: str) -> int:
  """Announces a body over the limit and waits for the answer before sending it (the server
  refuses on the header, without reading)."""
  import http.client  # pylint: disable=g-import-not-at-top
  host, port = url.removeprefix('http://').split(':')
  connection = http.client.HTTPConnection(host, int(port), timeout=30)
  connection.putrequest('POST', '/predict')
  connection.putheader('Content-Length', str(demo_app.MAX_BYTES + 1))
  connection.endheaders()
  response = connection.getresponse()
  assert 'larger than' in json.loads(response.read())['error']
  connection.close()
  return response.status


def png(image: np.ndarray) -> bytes:
  return conftest.encode(image, 'PNG')


def expected_top(predictor, data: bytes) -> str:
  """The top class that charjax.predict's preprocessing and the run's network give."""
  grey = predict.load_image(io.BytesIO(data))
  x = predict.to_input(grey, predictor.size, crop=True, margin=demo_app.CROP_MARGIN)
  return predictor.classifier.class_names[int(np.argmax(predictor.scores(x)))]


def test_page_predictions_and_bad_requests(reference_run):
  rng = np.random.default_rng(0)
  images = [png(conftest.character_image(k, 28, rng, dark_ink=True)) for k in (1, 4, 7)]
  with serving(reference_run[1]) as (url, predictor):
    with urllib.request.urlopen(url + '/') as response:
      page = response.read().decode('utf-8')
    assert '<canvas id="pad"' in page and 'draw a character' in page
    with urllib.request.urlopen(url + '/devanagari.ttf') as response:  # the glyphs' font
      assert response.headers['Content-Type'] == 'font/ttf' and len(response.read()) > 10_000
    for data in images:
      status, answer = post(url, data)
      assert status == 200
      assert len(answer['top']) == 5 and answer['top'][0]['name'] == expected_top(predictor, data)
      assert answer['input_png'].startswith('data:image/png;base64,')
      scores = [t['score'] for t in answer['top']]
      assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert post(url, png(np.full((280, 280), 255, np.uint8))) == (422, {'error': 'draw a character'})
    status, answer = post(url, b'this is not an image')
    assert status == 400 and 'not an image' in answer['error']
    assert post(url, b'')[0] == 400
    assert post(url, b'\x89PNG\r\n\x1a\n' + b'\0' * 100)[0] == 400  # a damaged PNG
    assert post_too_large(url) == 413
    with pytest.raises(urllib.error.HTTPError) as err:
      urllib.request.urlopen(url + '/predict')  # GET
    assert err.value.code == 405
    assert post(url, images[0])[0] == 200  # still serving


@pytest.mark.slow  # 200 requests
def test_a_burst_of_concurrent_requests_is_answered_correctly(reference_run):
  rng = np.random.default_rng(1)
  images = [png(conftest.character_image(k, 28, rng, dark_ink=True)) for k in range(4)]
  bad = [b'not an image', b'']
  with serving(reference_run[1]) as (url, predictor):
    expected = [expected_top(predictor, data) for data in images]

    def one(i):
      if i % 25 == 24:  # 8 malformed requests among the 200
        return 'bad', post(url, bad[i % 2])[0]
      status, answer = post(url, images[i % 4])
      return 'good', status == 200 and answer['top'][0]['name'] == expected[i % 4]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      outcomes = list(pool.map(one, range(200)))
    good = [ok for kind, ok in outcomes if kind == 'good']
    bad_codes = [code for kind, code in outcomes if kind == 'bad']
    print(f'load test: {sum(good)} of {len(good)} images answered correctly; '
          f'malformed requests answered {sorted(set(bad_codes))} ({len(bad_codes)} of them)')
    assert all(good) and len(good) == 192
    assert bad_codes == [400] * 8
    assert post(url, images[0])[0] == 200  # still up


@pytest.mark.slow  # starts the command
def test_command_serves_the_page_until_stopped(reference_run):
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen([sys.executable, '-m', 'charjax.demo', f'--workdir={reference_run[1]}',
                           f'--port={port}'], cwd=conftest.pathlib.Path(__file__).parents[1],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert f'http://127.0.0.1:{port}/' in proc.stdout.readline()  # printed once it is ready
    url = f'http://127.0.0.1:{port}'
    for _ in range(100):
      try:
        with urllib.request.urlopen(url + '/') as response:
          assert '<canvas id="pad"' in response.read().decode('utf-8')
        break
      except urllib.error.URLError:
        time.sleep(0.1)
    rng = np.random.default_rng(2)
    status, answer = post(url, png(conftest.character_image(3, 28, rng, dark_ink=True)))
    assert status == 200 and len(answer['top']) == 5
  finally:
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
  assert 'Traceback' not in proc.stderr.read()


# --- the real-browser test -------------------------------------------------------------

CHROMIUM = next((p for p in ('/usr/bin/chromium', '/usr/bin/chromium-browser')
                 if os.path.exists(p)), None)
CHROMEDRIVER = shutil.which('chromedriver') or (
    '/usr/bin/chromedriver' if os.path.exists('/usr/bin/chromedriver') else None)
# CI sets this: there, a missing browser is a failure, not a skip.
REQUIRED = os.environ.get('CHARJAX_REQUIRE_BROWSER') == '1'


def _browser():
  try:
    from selenium import webdriver  # pylint: disable=g-import-not-at-top
    from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  except ImportError:
    if REQUIRED:
      raise
    pytest.skip('selenium not installed (pip install -e \'.[browser-test]\')')
  if not (CHROMIUM and CHROMEDRIVER):
    if REQUIRED:
      raise AssertionError('chromium and chromium-driver are not installed')
    pytest.skip('no chromium / chromedriver (apt install chromium chromium-driver)')
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ('--headless=new', '--no-sandbox', '--disable-gpu', '--window-size=1100,800',
              '--disable-dev-shm-usage'):
    options.add_argument(arg)
  return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def ink_runs(image: np.ndarray, threshold: int = 128):
  """Per row, the [start, end] columns of each run of dark pixels: the strokes to draw."""
  for r, row in enumerate(image < threshold):
    c = 0
    while c < len(row):
      if row[c]:
        start = c
        while c + 1 < len(row) and row[c + 1]:
          c += 1
        yield r, start, c
      c += 1


def draw(driver, canvas, image: np.ndarray) -> None:
  """Drags the mouse along every run of ink of `image`, scaled onto the canvas."""
  from selenium.webdriver.common.action_chains import ActionChains  # pylint: disable=g-import-not-at-top
  width = canvas.size['width']
  scale = width / image.shape[1]
  centre = width / 2
  actions = ActionChains(driver, duration=0)
  for r, c0, c1 in ink_runs(image):
    y = (r + 0.5) * scale - centre
    actions.move_to_element_with_offset(canvas, int((c0 + 0.5) * scale - centre), int(y))
    actions.click_and_hold()
    actions.move_to_element_with_offset(canvas, int((c1 + 0.5) * scale - centre), int(y))
    actions.release()
  actions.perform()


@pytest.mark.slow  # trains the real numerals network once; draws in headless Chromium
def test_drawing_real_nhcd_images_in_a_browser_shows_their_class(real_numerals_run, tmp_path):
  """Chromium opens the page; for one test-split image of each numeral, the mouse draws
  its ink (thresholded) stroke by stroke on the canvas, and the page's top 3 must hold the
  image's class."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  from charjax.data import archives  # pylint: disable=g-import-not-at-top
  workdir, results = real_numerals_run
  test_names = json.loads((workdir / 'splits.json').read_text())['test']
  chosen = {}
  for name in test_names:  # the first test image of each class
    chosen.setdefault(pathlib.PurePosixPath(name).parent.name, name)
  files = dict(archives.iter_files(conftest.SHARED_DATA / 'nhcd.zip', set(chosen.values())))
  driver = _browser()
  outcomes = []
  with serving(workdir) as (url, _):
    try:
      driver.get(url + '/')
      canvas = driver.find_element(By.ID, 'pad')
      for folder, name in sorted(chosen.items()):
        driver.find_element(By.ID, 'clear').click()
        image = np.asarray(Image.open(io.BytesIO(files[name])).convert('L'))
        draw(driver, canvas, image)
        time.sleep(0.4)  # past the page's 250 ms throttle of live updates
        WebDriverWait(driver, 60).until(lambda d: d.execute_script('return settled();'))
        shown = [row.get_attribute('data-name')
                 for row in driver.find_elements(By.CSS_SELECTOR, '#top tr.prediction')]
        truth = results['class_names'][int(folder)]
        outcomes.append({'file': name, 'class': truth, 'top3': shown[:3],
                         'top1': shown[0] == truth, 'in_top3': truth in shown[:3]})
      screenshot = pathlib.Path(os.environ.get('CHARJAX_SCREENSHOT_DIR', tmp_path)) / 'demo.png'
      driver.save_screenshot(str(screenshot))
    finally:
      driver.quit()
  report = {'images': len(outcomes), 'top1': sum(o['top1'] for o in outcomes),
            'top3': sum(o['in_top3'] for o in outcomes), 'outcomes': outcomes}
  print('browser test:', json.dumps(report, ensure_ascii=False))
  (tmp_path / 'browser_test.json').write_text(json.dumps(report, ensure_ascii=False, indent=2))
  assert len(outcomes) == 10
  assert report['top3'] == 10, outcomes
