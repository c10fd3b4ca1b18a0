"""`distill-sbs {train,eval,infer} --gin_file=... [--gin.NAME=value ...]`."""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

COMMANDS = {
    'train': 'distill_sbs.train',
    'eval': 'distill_sbs.eval',
    'infer': 'distill_sbs.infer',
}
# Subcommands other engineers' entry points provide (used when importable).
OPTIONAL_COMMANDS = {
    'prepare': 'distill_sbs.data.prepare',
    'generate_rationales': 'distill_sbs.generate_rationales',
    'calibrate': 'distill_sbs.calibrate',
}


def _usage() -> str:
  names = ', '.join(sorted({**COMMANDS, **OPTIONAL_COMMANDS}))
  return f'usage: distill-sbs COMMAND [flags]   (COMMAND: {names})'


def main(argv: Optional[Sequence[str]] = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
    print(_usage())
    raise SystemExit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  module_name = COMMANDS.get(command) or OPTIONAL_COMMANDS.get(command)
  if module_name is None:
    print(f'distill-sbs: unknown command {command!r}\n{_usage()}', file=sys.stderr)
    raise SystemExit(2)
  module = importlib.import_module(module_name)
  sub_argv = [f'distill-sbs {command}'] + argv[2:]
  entry = getattr(module, 'console_entry_point', None)
  if entry is not None:
    entry(sub_argv)
    return
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(module.main, argv=sub_argv)


if __name__ == '__main__':
  main()
