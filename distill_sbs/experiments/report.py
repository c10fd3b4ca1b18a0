"""Markdown tables and `report.md` writing (plain text, no templates)."""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

from distill_sbs.experiments import runs as runs_lib


def fmt_cell(v: Any, digits: int = 4) -> str:
  if v is None:
    return '–'
  if isinstance(v, float):
    if v != v:  # NaN
      return '–'
    if abs(v) >= 1000:
      return f'{v:,.0f}'
    return f'{v:.{digits}f}'.rstrip('0').rstrip('.') if digits else f'{v:.0f}'
  return str(v)


def mean_std_cell(row: Mapping[str, Any], metric: str, digits: int = 4) -> str:
  """'0.512 ± 0.013' from `{metric}_mean`/`{metric}_std`, or the raw value."""
  if runs_lib.is_number(row.get(f'{metric}_mean')):
    mean = f'{float(row[f"{metric}_mean"]):.{digits}f}'
    if int(row.get('n_seeds', 1)) > 1 and runs_lib.is_number(row.get(f'{metric}_std')):
      return f'{mean} ± {float(row[f"{metric}_std"]):.{digits}f}'
    return mean
  v = row.get(metric)
  return f'{float(v):.{digits}f}' if runs_lib.is_number(v) else '–'


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   headers: Optional[Sequence[str]] = None,
                   cell=None) -> str:
  """A GitHub markdown table; `cell(row, column) -> str` overrides formatting."""
  headers = list(headers or columns)
  if len(headers) != len(columns):
    raise ValueError(f'{len(headers)} headers for {len(columns)} columns')
  cell = cell or (lambda r, c: fmt_cell(r.get(c)))
  lines = ['| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join('---' for _ in columns) + '|']
  for r in rows:
    lines.append('| ' + ' | '.join(cell(r, c) for c in columns) + ' |')
  return '\n'.join(lines)


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
               headers: Optional[Sequence[str]] = None, cell=None) -> str:
  """The same table aligned for a terminal."""
  headers = list(headers or columns)
  cell = cell or (lambda r, c: fmt_cell(r.get(c)))
  body = [[cell(r, c) for c in columns] for r in rows]
  widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
            for i, h in enumerate(headers)]
  line = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths))
  return '\n'.join([line(headers), line(['-' * w for w in widths])] +
                   [line(b) for b in body])


def write_report(path: os.PathLike | str, title: str,
                 sections: Sequence[tuple[str, str]]) -> pathlib.Path:
  """Writes `# title` then `## heading\\n\\nbody` per section."""
  path = pathlib.Path(path)
  parts = [f'# {title}', '']
  for heading, body in sections:
    parts += [f'## {heading}', '', body.rstrip(), '']
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text('\n'.join(parts))
  return path


def image(name: str, alt: str) -> str:
  return f'![{alt}]({name})'
