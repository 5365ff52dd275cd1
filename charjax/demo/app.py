"""The demo's web app: one page with a drawing canvas, and a JSON prediction endpoint.

Starlette (the ASGI toolkit under FastAPI; small, well kept) serves two routes:

- `GET /`: the page (`page.html`: a canvas for mouse, pen or touch, an upload button, a
  clear button, the top-5 classes and the input the model saw); `GET /devanagari.ttf`: the
  font its glyphs are drawn in (Noto Sans Devanagari, from charjax's dependencies);
- `POST /predict`: the body is an image file (the canvas as PNG, or an upload); the answer
  is `{"top": [{"name", "latin", "glyph", "score"}, ...5], "input_png": data URL}`.

The image goes through `charjax.predict` (one code path: `load_image`, then `to_input`, with
`crop` on by default, with a thin margin: a drawing rarely fills the canvas as an NHCD
character fills its frame). The network is jitted once for a single (1, S, S, 1) input and warmed up before the
first request. A body that is not an image, or is larger than `max_bytes`, gets a 4xx with a
JSON message; an empty drawing gets 422 "draw a character". Nothing a client sends can
bring a traceback or stop the server.
"""

from __future__ import annotations

import base64
import io
import pathlib

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from charjax import predict

PAGE = pathlib.Path(__file__).with_name('page.html')
MAX_BYTES = 5_000_000          # request bodies above this are refused (413)
MAX_PIXELS = 4_000_000         # images above this are refused before decoding
TOP_K = 5
# Margin left around a drawing's ink when it is cropped: NHCD's characters touch their frame.
CROP_MARGIN = 0.04
BLANK = 'draw a character'


class Predictor:
  """A run's classifier on one image at a time, compiled once (JAX calls are thread-safe)."""

  def __init__(self, classifier: predict.Classifier, *, crop: bool = True,
               margin: float = CROP_MARGIN):
    self.classifier, self.crop, self.margin = classifier, crop, margin
    self.size = classifier.size
    self.scores(np.zeros((self.size, self.size, 1), np.float32))  # compile before serving

  def scores(self, model_input: np.ndarray) -> np.ndarray:
    return np.asarray(self.classifier.scores(model_input[None]))[0]

  def __call__(self, data: bytes) -> dict:
    """The top classes of image bytes; raises ValueError with a message for the user."""
    grey = predict.load_image(io.BytesIO(data), MAX_PIXELS)
    model_input = predict.to_input(grey, self.size, crop=self.crop, margin=self.margin)
    row = self.scores(model_input)
    if not np.all(np.isfinite(row)):
      raise RuntimeError('the network gave NaN or infinite scores')
    best = np.argsort(-row, kind='stable')[:TOP_K]
    top = []
    for i in best:
      latin, glyph = predict.split_name(self.classifier.class_names[i])
      top.append({'name': self.classifier.class_names[i], 'latin': latin, 'glyph': glyph,
                  'index': int(i), 'score': float(row[i])})
    return {'top': top, 'input_png': _png_data_url(model_input)}


def _png_data_url(model_input: np.ndarray) -> str:
  pixels = (np.clip(model_input[..., 0], 0, 1) * 255).round().astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return 'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode('ascii')


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({'error': message}, status_code=status)


def devanagari_font() -> bytes | None:
  """Noto Sans Devanagari (OFL) from charjax's font dependency, so the glyphs show on
  machines without a Devanagari font; None if it is not installed."""
  try:
    import fontpkg_noto_sans_devanagari as noto  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  files = sorted((noto.ROOT / 'files').glob('*.ttf'))
  return files[0].read_bytes() if files else None


def create_app(predictor: Predictor, *, score_label: str = 'probability') -> Starlette:
  """The Starlette app serving `predictor`'s page and predictions."""
  page = PAGE.read_text(encoding='utf-8').replace('{{SCORE_LABEL}}', score_label).replace(
      '{{SIZE}}', str(predictor.size))
  font = devanagari_font()

  async def index(request: Request):
    del request
    return HTMLResponse(page)

  async def font_route(request: Request):
    del request
    if font is None:
      return _error(404, 'no Devanagari font installed with charjax')
    return Response(font, media_type='font/ttf',
                    headers={'Cache-Control': 'max-age=86400'})

  async def predict_route(request: Request):
    declared = request.headers.get('content-length')
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BYTES):
      return _error(413, f'the image is larger than {MAX_BYTES:,} bytes')
    body = b''
    async for chunk in request.stream():
      body += chunk
      if len(body) > MAX_BYTES:
        return _error(413, f'the image is larger than {MAX_BYTES:,} bytes')
    if not body:
      return _error(400, 'send an image file (PNG, JPEG, ...) as the request body')
    try:
      return JSONResponse(await run_in_threadpool(predictor, body))
    except ValueError as e:
      if 'blank' in str(e):
        return _error(422, BLANK)
      return _error(400, f'not a usable image: {e}')
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
      return _error(400, f'not an image charjax can read ({type(e).__name__})')
    except Exception as e:  # pylint: disable=broad-except
      return _error(500, f'prediction failed ({type(e).__name__}); the server keeps running')

  return Starlette(routes=[Route('/', index), Route('/devanagari.ttf', font_route),
                           Route('/predict', predict_route, methods=['POST'])])
