"""distill_sbs.tasks: importing this package registers every SeqIO task/mixture.

Once per process (Python imports a module once; SeqIO raises on a name
registered twice): `sbs` (distilling step-by-step, with its fraction and
mode-token variants), then `first` (FIRST, rank and eval tasks), `ul2r` and
`flan`, which build on `sbs`. Import it as `distill_sbs.tasks` only: the same
files under a second module name (`tasks`) would register every name again.
"""
if __name__ != 'distill_sbs.tasks':
  raise ImportError(f'import distill_sbs.tasks, not {__name__!r} (the top-level '
                    'tasks/ folder is installed as distill_sbs.tasks)')

from distill_sbs.tasks import sbs  # noqa: F401,E402  pylint: disable=g-import-not-at-top
from distill_sbs.tasks import first  # noqa: F401,E402  pylint: disable=g-import-not-at-top
from distill_sbs.tasks import ul2r  # noqa: F401,E402  pylint: disable=g-import-not-at-top
from distill_sbs.tasks import flan  # noqa: F401,E402  pylint: disable=g-import-not-at-top
