"""Class tables of NHCD and DHCD: folder name, Latin label and Devanagari glyph.

They mirror `nhcd/labels.csv` (checked against it when a dataset is prepared). The 58-class
order is the study's: numerals (0-9), vowels (10-21), consonants (22-57).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CharClass:
  subset: str
  folder: str
  latin: str
  glyph: str

  @property
  def name(self) -> str:
    """Unique display name, e.g. 'ka (क)'; Latin labels alone repeat ('dha')."""
    return f'{self.latin} ({self.glyph})'


_NUMERALS = [(str(i), str(i), g) for i, g in enumerate('०१२३४५६७८९')]
_VOWELS = list(zip(
    map(str, range(1, 13)),
    'a aa i ee u oo ae ai o au an ah'.split(),
    ['अ', 'आ', 'इ', 'ई', 'उ', 'ऊ', 'ए', 'ऐ', 'ओ', 'औ', 'अं', 'अः']))
_CONSONANTS = list(zip(
    map(str, range(1, 37)),
    ('ka kha ga gha kna cha chha ja jha yna ta tha da dha ana taa thaa daa dhaa na pa pha '
     'ba dha ma ya ra la va motosaw petchiryosaw patalosaw ha ksha tra gya').split(),
    ['क', 'ख', 'ग', 'घ', 'ङ', 'च', 'छ', 'ज', 'झ', 'ञ', 'ट', 'ठ', 'ड', 'ढ', 'ण', 'त', 'थ', 'द',
     'ध', 'न', 'प', 'फ', 'ब', 'भ', 'म', 'य', 'र', 'ल', 'व', 'श', 'ष', 'स', 'ह', 'क्ष', 'त्र',
     'ज्ञ']))

NHCD_SUBSETS: dict[str, tuple[CharClass, ...]] = {
    subset: tuple(CharClass(subset, *row) for row in rows)
    for subset, rows in (('numerals', _NUMERALS), ('vowels', _VOWELS),
                         ('consonants', _CONSONANTS))
}
NHCD_SUBSETS['all'] = (
    NHCD_SUBSETS['numerals'] + NHCD_SUBSETS['vowels'] + NHCD_SUBSETS['consonants'])

DHCD_CLASSES: tuple[CharClass, ...] = tuple(
    CharClass('consonants', f'character_{c.folder}', c.latin, c.glyph)
    for c in NHCD_SUBSETS['consonants']) + tuple(
        CharClass('numerals', f'digit_{c.folder}', c.latin, c.glyph)
        for c in NHCD_SUBSETS['numerals'])


def parse_labels_csv(text: str) -> dict[str, list[tuple[str, str, str]]]:
  """Parses NHCD's sectioned `labels.csv` into {subset: [(folder, latin, glyph), ...]}."""
  sections: dict[str, list[tuple[str, str, str]]] = {}
  current = None
  for line in text.splitlines():
    cells = [c.strip() for c in line.split(',')]
    if not any(cells):
      continue
    head = cells[0].lower()
    if head in ('numerals', 'vowels', 'consonants') and not any(cells[1:]):
      current = sections.setdefault(head, [])
    elif head == 'class' or current is None:
      continue
    else:
      current.append((cells[0], cells[1], cells[2]))
  return sections
