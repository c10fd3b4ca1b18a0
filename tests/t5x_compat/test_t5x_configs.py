"""T5X launch files and the import boundary; these run WITHOUT T5X (CI).

The gin files in t5x_configs/t5x/ are checked as text (T5X's own run files are
not available here): includes, macros, the T5X model classes they bind, and
that every task they name is registered by `distill_sbs.tasks`.
"""
import ast
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
T5X_DIR = REPO / 't5x_configs' / 't5x'
COMPAT = REPO / 'distill_sbs' / 't5x_compat'
DATASETS = ('cqa', 'svamp', 'esnli', 'anli1')
SIZES = ('tiny', 'small', 'base')
METHOD_CLASS = {'standard_finetune': 'ProjectLossEncoderDecoderModel',
                'sbs_llm': 'SbsEncoderDecoderModel', 'first': 'FirstEncoderDecoderModel',
                'ul2r': 'ProjectLossEncoderDecoderModel'}
# Methods that only change the training task: a binding on the base method file.
VARIANTS = {'standard_distill': ('standard_finetune', 'LABEL_LLM_TASK'),
            'sbs_gold': ('sbs_llm', 'PAIRED_GOLD_TASK')}
T5X_RUNS = ('t5x/configs/runs/finetune.gin', 't5x/configs/runs/pretrain.gin')
RUN_FILES = ('sbs_cqa_tiny',)  # experiment files; the rest are method files
# Method files for decoder-only students (a model gin binding NETWORK first).
DECODER_ONLY_METHODS = {'sbs_decoder_only': 'SbsDecoderOnlyModel'}
DECODER_ONLY_MODELS = ('qwen3/tiny', 'llama/tiny', 'gemma3/tiny')

_INCLUDE = re.compile(r"^include\s+'([^']+)'", re.M)


def _includes(path):
  return _INCLUDE.findall(path.read_text())


def _compat_exports():
  tree = ast.parse((COMPAT / '__init__.py').read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and node.targets[0].id == '__all__':
      return set(ast.literal_eval(node.value))
  raise AssertionError('distill_sbs/t5x_compat/__init__.py has no __all__')


def _macros(files, bindings=()):
  """Macros of a T5X composition (T5X's own run file is not here: skipped)."""
  from distill_sbs.training import gin_macros  # pylint: disable=g-import-not-at-top
  return gin_macros.read_macros(files, bindings, skip=T5X_RUNS)


def test_method_files_are_the_project_methods():
  names = {p.stem for p in T5X_DIR.glob('*.gin')}
  assert names == {'common', 'from_project_checkpoint', *RUN_FILES, *METHOD_CLASS,
                   *DECODER_ONLY_METHODS}
  doc = (REPO / 'docs' / 't5x.md').read_text()
  for variant, (base, task) in VARIANTS.items():
    assert f'`{base}.gin` + `--gin.MIXTURE_OR_TASK_NAME=%{task}`' in doc, variant
  for name in (*METHOD_CLASS, *VARIANTS):
    if name != 'ul2r':
      assert (REPO / 'gin' / 'methods' / f'{name}.gin').is_file(), name


def test_sbs_cqa_tiny_composes_model_run_method_dataset():
  path = T5X_DIR / 'sbs_cqa_tiny.gin'
  inc = _includes(path)
  # Model size first, so T5X's run file sets DROPOUT_RATE etc. after it.
  assert inc == ['t5x_configs/models/t5_1_1/tiny.gin', T5X_RUNS[0],
                 't5x_configs/t5x/sbs_llm.gin', 'gin/datasets/cqa.gin'], inc
  m = _macros([str(path)])
  assert m['MIXTURE_OR_TASK_NAME'] == 'sbs_cqa_paired_llm'
  assert m['INFER_EVAL_MIXTURE_OR_TASK_NAME'] == 'sbs_cqa_predict_llm'
  assert m['TASK_FEATURE_LENGTHS'] == {'inputs': 768, 'targets': 288}  # packed rows
  assert m['BATCH_SIZE'] % 2 == 0  # label + rationale rows stay paired
  assert m['INITIAL_CHECKPOINT_PATH'] is None and m['TRAIN_STEPS'] > 0


@pytest.mark.parametrize('ds', DATASETS)
@pytest.mark.parametrize('method', [*METHOD_CLASS, *VARIANTS])
def test_every_method_composes_with_every_dataset(method, ds):
  run = T5X_RUNS[1] if method == 'ul2r' else T5X_RUNS[0]
  base, task = VARIANTS.get(method, (method, None))
  m = _macros(['t5x_configs/models/t5_1_1/tiny.gin', run, f't5x_configs/t5x/{base}.gin',
               f'gin/datasets/{ds}.gin'], [f'MIXTURE_OR_TASK_NAME=%{task}'] if task else [])
  assert isinstance(m['MIXTURE_OR_TASK_NAME'], str), m['MIXTURE_OR_TASK_NAME']
  assert ds in m['MIXTURE_OR_TASK_NAME']
  lengths = m['TASK_FEATURE_LENGTHS']
  assert set(lengths) == {'inputs', 'targets'} and all(isinstance(v, int) and v > 0
                                                       for v in lengths.values())
  if method.startswith('sbs'):
    assert isinstance(m['INFER_EVAL_MIXTURE_OR_TASK_NAME'], str)
  if method == 'first':
    assert isinstance(m['EVAL_TASK'], str)


def test_method_files_import_tasks_and_bind_t5x_compat_classes():
  common = (T5X_DIR / 'common.gin').read_text()
  assert re.search(r'^import distill_sbs\.tasks\b', common, re.M)
  assert 'from __gin__ import dynamic_registration' in common
  assert re.search(r'^USE_CACHED_TASKS = False', common, re.M)
  exports = _compat_exports()
  for kind, cls in METHOD_CLASS.items():
    text = (T5X_DIR / f'{kind}.gin').read_text()
    assert "include 't5x_configs/t5x/common.gin'" in text, kind
    assert f'MODEL = @t5x_compat.{cls}()' in text, kind
    assert re.search(rf'^t5x_compat\.{cls}:\n(  .+\n)*  module = @models\.Transformer\(\)',
                     text, re.M), kind
    assert 'loss_fn = %LOSS_FN' in text, kind
  for path in T5X_DIR.glob('*.gin'):
    for name in re.findall(r'@t5x_compat\.(\w+)', path.read_text()):
      assert name in exports, f'{path.name}: t5x_compat.{name} is not exported'
    for inc in _includes(path):
      assert inc in T5X_RUNS or (REPO / inc).is_file(), f'{path.name}: missing {inc}'
  sbs = (T5X_DIR / 'sbs_llm.gin').read_text()
  assert 'LOSS_FN = @losses.StepByStepLoss()' in sbs and '  alpha = %ALPHA' in sbs
  assert 'FEATURE_CONVERTER = @t5x_compat.PairedFeatureConverter' in sbs
  for text in (sbs, (T5X_DIR / 'first.gin').read_text()):
    assert 'pack = False' not in text  # packed, as T5X's default
  assert "include 'gin/methods/first.gin'" in (T5X_DIR / 'first.gin').read_text()


@pytest.mark.parametrize('ds', DATASETS)
@pytest.mark.parametrize('model', DECODER_ONLY_MODELS)
def test_sbs_decoder_only_composes_with_decoder_only_model_gins(model, ds):
  path = T5X_DIR / 'sbs_decoder_only.gin'
  m = _macros([f't5x_configs/models/{model}.gin', T5X_RUNS[0], str(path),
               f'gin/datasets/{ds}.gin'])
  assert m['MIXTURE_OR_TASK_NAME'] == f'sbs_{ds}_paired_llm'
  assert m['INFER_EVAL_MIXTURE_OR_TASK_NAME'] == f'sbs_{ds}_predict_llm'
  lengths = m['TASK_FEATURE_LENGTHS']
  assert set(lengths) == {'inputs', 'targets'} and all(isinstance(v, int) and v > 0
                                                       for v in lengths.values())
  assert 'NETWORK' in m  # bound by the model gin, read by this file
  text = path.read_text()
  assert "include 't5x_configs/t5x/common.gin'" in text
  for cls in DECODER_ONLY_METHODS.values():
    assert f'MODEL = @t5x_compat.{cls}()' in text and cls in _compat_exports()
  assert re.search(r'^t5x_compat\.SbsDecoderOnlyModel:\n(  .+\n)*  module = %NETWORK', text,
                   re.M)
  assert 'loss_fn = %LOSS_FN' in text and 'LOSS_FN = @losses.StepByStepLoss()' in text
  assert 'FEATURE_CONVERTER = @t5x_compat.DecoderOnlyPairedFeatureConverter' in text


def _load_decoder_only_batches():
  """decoder_only_batches.py imports no T5X; load it by path (the package needs T5X)."""
  spec = importlib.util.spec_from_file_location('_t5x_compat_decoder_only_batches',
                                                COMPAT / 'decoder_only_batches.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_decoder_only_batches_masks_and_predictions():
  """The T5X-free half of the decoder-only wrapper: masks from the loss weights
  (id 0 is a real token), per-task token sums, and predictions = the project's
  decoding of each row's prompt part, 0 after EOS, best decode last."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  from distill_sbs import models  # pylint: disable=g-import-not-at-top
  from distill_sbs.training import decoder_only_model  # pylint: disable=g-import-not-at-top
  batches = _load_decoder_only_batches()
  # Rows `inputs ++ targets` cut (not shifted): two rows, targets at weights 1.
  batch = {'decoder_input_tokens': np.array([[5, 0, 7, 9, 0, 0], [4, 6, 8, 3, 2, 0]]),
           'decoder_target_tokens': np.array([[0, 7, 9, 1, 0, 0], [6, 8, 3, 2, 1, 0]]),
           'decoder_loss_weights': np.array([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]]),
           'decoder_segment_ids': np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]),
           'decoder_task_ids': np.array([[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0]])}
  mask = np.asarray(batches.loss_mask(batch))
  np.testing.assert_array_equal(mask, batch['decoder_loss_weights'] > 0)
  assert mask[0, 1]  # target id 0 at a weighted position is a real token
  np.testing.assert_array_equal(batches.metric_segment_ids(batch)['decoder'],
                                batch['decoder_segment_ids'])
  sums = batches.task_token_means(jnp.ones((2, 6)), batch)
  assert [int(sums[k][1]) for k in ('label_loss', 'rationale_loss')] == [3, 3]
  with pytest.raises(KeyError, match='decoder_loss_weights'):
    batches.loss_mask({'decoder_target_tokens': batch['decoder_target_tokens']})
  cfg = models.DecoderOnlyConfig(model_type='qwen3', vocab_size=16, emb_dim=16, num_heads=2,
                                 num_kv_heads=1, num_layers=1, head_dim=8, mlp_dim=32,
                                 qk_norm=True, eos_ids=(1,))
  x = jnp.ones((1, 4), jnp.int32)
  params = meta.unbox(models.DecoderOnlyTransformer(cfg).init(
      jax.random.PRNGKey(0), x, enable_dropout=False)['params'])
  params = jax.tree.map(lambda a: a * 4.0, params)
  tokens, aux = batches.predict(cfg, params, batch, max_decode_length=5)
  prompts, lengths = decoder_only_model.prompt_from_batch(batch)
  np.testing.assert_array_equal(lengths, [2, 3])
  want, want_lp = models.generate(cfg.replace(eos_ids=(10 ** 6,)), params, prompts,
                                  max_decode_length=5, prompt_lengths=lengths)
  want = np.asarray(want)
  for r in range(2):  # equal up to the first EOS, 0 after it
    row, end = np.asarray(tokens[r]), np.nonzero(want[r] == 1)[0]
    n = end[0] + 1 if end.size else 5
    np.testing.assert_array_equal(row[:n], want[r, :n])
    assert (row[n:] == 0).all()
  assert aux['scores'].shape == (2,)
  all_tokens, all_aux = batches.predict(cfg, params, batch, method='beam', num_decodes=3,
                                        max_decode_length=5, return_all_decodes=True)
  assert all_tokens.shape == (2, 3, 5) and all_aux['scores'].shape == (2, 3)
  assert (np.diff(np.asarray(all_aux['scores']), axis=1) >= -1e-6).all()  # best last


def test_named_tasks_are_registered():
  import seqio  # pylint: disable=g-import-not-at-top
  import distill_sbs.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  names = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  for method in METHOD_CLASS:
    for ds in DATASETS:
      macros = _macros(['t5x_configs/models/t5_1_1/tiny.gin', f't5x_configs/t5x/{method}.gin',
                        f'gin/datasets/{ds}.gin'])
      for key in ('MIXTURE_OR_TASK_NAME', 'INFER_EVAL_MIXTURE_OR_TASK_NAME', 'EVAL_TASK'):
        if isinstance(macros.get(key), str):
          assert macros[key] in names, f'{method}/{ds}: {key} {macros[key]!r} is not registered'


def test_nothing_else_imports_t5x():
  pattern = re.compile(r'^\s*(import\s+t5x\b|from\s+t5x\b)', re.M)
  offenders = []
  for root in (REPO / 'distill_sbs', REPO / 'tasks'):
    for py in root.rglob('*.py'):
      if COMPAT in py.parents:
        continue
      if pattern.search(py.read_text(encoding='utf-8', errors='replace')):
        offenders.append(str(py.relative_to(REPO)))
  assert not offenders, f'only distill_sbs/t5x_compat may import T5X: {offenders}'


_BLOCK_T5X = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "t5x" or name.startswith("t5x."):
      raise ImportError("No module named %r (blocked by the test)" % name)
sys.meta_path.insert(0, _Block())
'''


def test_without_t5x_project_imports_and_compat_explains():
  code = _BLOCK_T5X + '''
import distill_sbs, distill_sbs.models, distill_sbs.distill.losses
import distill_sbs.training.model, distill_sbs.training.checkpoints
assert not any(m == "t5x" or m.startswith("t5x.") for m in sys.modules)
try:
  import distill_sbs.t5x_compat
except ImportError as e:
  print("MSG:", e)
else:
  raise SystemExit("distill_sbs.t5x_compat imported without T5X")
'''
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  msg = out.stdout.split('MSG:', 1)[1]
  assert 'needs T5X' in msg and 'docs/t5x.md' in msg and 'distill_sbs.train' in msg


def _load_variables_module():
  """variables.py needs only flax; load it by path (the package needs T5X)."""
  spec = importlib.util.spec_from_file_location('_t5x_compat_variables',
                                                COMPAT / 'variables.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_unbox_with_axes_gives_t5x_layout():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax.core import meta  # pylint: disable=g-import-not-at-top
  from distill_sbs.models import T5Config, Transformer  # pylint: disable=g-import-not-at-top
  variables_lib = _load_variables_module()
  cfg = T5Config(vocab_size=32, emb_dim=8, num_heads=2, num_encoder_layers=1,
                 num_decoder_layers=1, head_dim=4, mlp_dim=16)
  x = jnp.ones((2, 5), jnp.int32)
  boxed = Transformer(cfg).init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)
  out = variables_lib.unbox_with_axes(boxed)
  assert set(out) == {'params', 'params_axes'}
  plain = jax.tree_util.tree_flatten_with_path(meta.unbox(boxed['params']))[0]
  ours = dict(jax.tree_util.tree_flatten_with_path(out['params'])[0])
  assert len(plain) == len(ours) > 10
  for path, value in plain:
    np.testing.assert_array_equal(ours[path], value)
  axes = out['params_axes']
  assert tuple(axes['token_embedder']['embedding_axes'].names) == ('vocab', 'embed')
  assert tuple(axes['decoder']['decoder_norm']['scale_axes'].names) == ('embed',)
  q = out['params']['encoder']['layers_0']['attention']['query']['kernel']
  names = axes['encoder']['layers_0']['attention']['query']['kernel_axes'].names
  assert len(names) == q.ndim
  with pytest.raises(ValueError, match='params/w: parameter has no logical axis names'):
    variables_lib.axis_metadata({'params': {'w': np.zeros(3)}})
