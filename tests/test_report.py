"""The report's figure helpers that need no runs."""

from matplotlib import font_manager

from charjax.study import report


def test_devanagari_font_from_the_dependency_is_registered():
  name = report._devanagari_font()
  assert name == 'Noto Sans Devanagari'
  path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
  assert 'Devanagari' in path
  assert report._labels(['ka (क)'], name) == ['ka (क)']
  assert report._labels(['ka (क)'], None) == ['ka']
