"""`distill-sbs {train,eval,infer} --gin_file=... [--gin.NAME=value ...]`."""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

COMMANDS = {
    'train': 'distill_sbs.train',
    'eval': 'distill_sbs.eval',
    'infer': 'distill_sbs.infer',
    'export': 'distill_sbs.export',
}
# Other entry points: module and how its `main` takes arguments ('argparse':
# main(args without the program name); 'absl': main(argv) under absl.app.run).
OPTIONAL_COMMANDS = {
    'prepare': 'distill_sbs.data.prepare',
    'generate_rationales': 'distill_sbs.generate_rationales',
    'calibrate': 'distill_sbs.calibrate',
}
ARGPARSE_COMMANDS = ('prepare', 'calibrate')


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
  if command in ARGPARSE_COMMANDS:
    result = module.main(argv[2:])
    raise SystemExit(result if isinstance(result, int) else 0)
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(lambda a: sys.exit(module.main(a)), argv=sub_argv)


if __name__ == '__main__':
  main()
