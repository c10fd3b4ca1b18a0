r"""Generate teacher rationales into training-ready TFRecords.

  python -m distill_sbs.generate_rationales --dataset=cqa --split=train \
    --backend=openai --base_url=http://127.0.0.1:8000/v1 --model=NAME \
    --out_dir=DIR --concurrency=8 --timeout=30 --max_examples=N \
    --num_samples=1 --temperature=0 --api_key_env=OPENAI_API_KEY

  python -m distill_sbs.generate_rationales --dataset=svamp --split=train \
    --backend=local --checkpoint=/path/to/flan_t5_hf_dir --out_dir=DIR

`--backend=local` also takes a decoder-only HF directory (llama / qwen2 / qwen3 /
gemma3_text; its `tokenizer.json` is the teacher vocabulary).

Inputs: the prepared records of `--dataset/--split` under `--data_dir`, or a
JSON-lines file (`--input_jsonl`, one object per line with `inputs` or the raw
row fields, optional `id` and `label`). Output in `--out_dir`:
`{split}.tfrecord-*` (the project's record schema), `manifest.json`,
`failures.jsonl`, `config.gin`. Rerunning the same command resumes.

A served LLM in another tokenizer than the student's (vLLM / SGLang with
`--max-logprobs` >= k): `--top_logprobs=5` asks for its top-5 per token, and
the records store it carried onto the student's vocabulary (`--student_spm_path`
or the project vocabulary; `--teacher_tokenizer` names the teacher's in the
manifest; `--carry_mismatch=zero|uld` for positions that do not align one to
one). See docs/cross_tokenizer.md.
`--copy_splits=validation,test` copies those prepared splits unchanged, so DIR
is a complete records dir: `distill_sbs.tasks.sbs.register_sbs_tasks(ds,
records_dir=DIR, prefix='sbs_myteacher')` trains on it with no conversion
(FIRST top-k records from `--backend=local` are read by `data/topk.py`).

Gin: `--gin_file=gin/teacher/vllm.gin --gin_bindings='...'` configure
`GenerationConfig`, `SamplingConfig`, `OpenAIBackend`, `RetryPolicy`,
`LocalT5Backend`; flags given on the command line override gin.
Exit status: 0 when every input has a record, 3 when some failed (rerun to
retry them), 130 on Ctrl-C (rerun to resume).
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
import gin

F = flags.FLAGS
# Inputs / outputs (GenerationConfig).
flags.DEFINE_string('dataset', None, 'cqa | svamp | esnli | anli1.')
flags.DEFINE_string('split', 'train', 'Split of the prepared dataset / output name.')
flags.DEFINE_string('data_dir', None, 'Prepared records root (default $DISTILL_SBS_DATA_DIR).')
flags.DEFINE_string('input_jsonl', None, 'JSON-lines inputs instead of --dataset records.')
flags.DEFINE_string('prompt_file', None, 'Prompt JSON overriding tasks/data/prompts/{ds}.json.')
flags.DEFINE_string('out_dir', None, 'Output directory.')
flags.DEFINE_integer('max_examples', 0, 'Use the first N inputs (0 = all).')
flags.DEFINE_boolean('chat', False, 'Chat-completions style prompts.')
flags.DEFINE_integer('num_shards', 0, 'Output shards (0 = one per 50k records).')
flags.DEFINE_integer('part_size', 64, 'Records per crash-safe part file.')
flags.DEFINE_boolean('keep_parse_failures', True, 'Write unparsable completions too.')
flags.DEFINE_boolean('progress', True, 'Show a progress bar.')
flags.DEFINE_list('copy_splits', [], 'Prepared splits copied into --out_dir unchanged '
                  '(e.g. validation,test) so it is a complete records_dir.')
# Sampling (SamplingConfig).
flags.DEFINE_integer('num_samples', 1, 'Samples per input (>1: self-consistency vote).')
flags.DEFINE_float('temperature', 0.0, 'Sampling temperature.')
flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling.')
flags.DEFINE_integer('max_tokens', 256, 'Maximum generated tokens.')
flags.DEFINE_integer('top_logprobs', 0, 'HTTP: top log-probs per token to capture.')
flags.DEFINE_integer('seed', None, 'Sampling seed passed to the teacher.')
# Backends.
flags.DEFINE_enum('backend', 'openai', ['openai', 'local'], 'Teacher backend.')
flags.DEFINE_string('base_url', None, 'OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1')
flags.DEFINE_string('model', None, 'Served model name (local: a display name).')
flags.DEFINE_string('api_key_env', 'OPENAI_API_KEY', 'Env var holding the API key.')
flags.DEFINE_integer('concurrency', 8, 'HTTP requests in flight.')
flags.DEFINE_float('timeout', 30.0, 'Per-request timeout (s).')
flags.DEFINE_boolean('samples_via_n', True, 'HTTP: one request with n= for the samples.')
flags.DEFINE_boolean('logprob_token_ids', False,
                     'vLLM: ask for token ids in logprobs and store top-k in the records.')
flags.DEFINE_string('teacher_vocabulary', None,
                    'HTTP with --logprob_token_ids: the served model\'s checkpoint directory '
                    '(tokenizer.json or spiece.model) or tokenizer.json; its vocabulary hash is '
                    'stored on the records, so FIRST students of that vocabulary accept them.')
flags.DEFINE_boolean('carry_topk', True, 'HTTP top-k in the teacher\'s own tokenizer: carry '
                     'it onto the student vocabulary (data/cross_tokenizer.py).')
flags.DEFINE_string('teacher_tokenizer', None, 'Name of the teacher tokenizer (manifest).')
flags.DEFINE_enum('carry_mismatch', None, ['zero', 'uld'],
                  'Positions not aligned one to one: loss weight 0 or the ULD loss.')
flags.DEFINE_integer('carry_k', None, 'Top-k rows stored per student token (default 5).')
flags.DEFINE_string('student_spm_path', None, 'Student SentencePiece model for the carry '
                    '(default: the project vocabulary).')
flags.DEFINE_string('checkpoint', None, 'Local teacher: HF directory (T5 or decoder-only) '
                    'or our checkpoint dir.')
flags.DEFINE_integer('batch_size', 16, 'Local teacher batch size.')
flags.DEFINE_integer('topk', 5, 'Local teacher: top-k stored per target token.')
flags.DEFINE_integer('max_input_length', 1024, 'Local teacher: prompt tokens (left-truncated).')
flags.DEFINE_integer('model_parallel', 1, "Local teacher: devices per model replica ('model' axis).")
# Gin.
flags.DEFINE_multi_string('gin_file', [], 'Gin files.')
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings.')

_GEN_FLAGS = ('dataset', 'split', 'data_dir', 'input_jsonl', 'prompt_file', 'out_dir',
              'max_examples', 'chat', 'num_shards', 'part_size',
              'keep_parse_failures', 'progress', 'copy_splits')
_SAMPLING_FLAGS = ('num_samples', 'temperature', 'top_p', 'max_tokens', 'top_logprobs',
                   'seed')
_HTTP_FLAGS = ('base_url', 'model', 'api_key_env', 'concurrency', 'timeout',
               'samples_via_n', 'logprob_token_ids')
_LOCAL_FLAGS = ('checkpoint', 'model', 'batch_size', 'topk', 'max_input_length',
                'model_parallel')
_CARRY_FLAGS = ('carry_topk', 'teacher_tokenizer', 'carry_mismatch', 'carry_k',
                'student_spm_path')
_RENAME = {'topk': 'k', 'carry_topk': 'enabled', 'carry_mismatch': 'mismatch',
           'carry_k': 'k'}


def _given(names) -> dict:
  """Flags set on the command line (they override gin and defaults)."""
  return {_RENAME.get(n, n): F[n].value for n in names if F[n].present}


def _flags_header() -> str:
  """The command-line flags as gin comments (they override the bindings below)."""
  names = dict.fromkeys(('backend', 'teacher_vocabulary') + _GEN_FLAGS + _SAMPLING_FLAGS
                        + _HTTP_FLAGS + _LOCAL_FLAGS + _CARRY_FLAGS + ('gin_file', 'gin_bindings'))
  lines = [f'#   --{n}={F[n].value!r}' for n in names if F[n].present]
  return '# Command-line flags (override the bindings below):\n' + '\n'.join(lines) + '\n\n'


def build_backend(name: str):
  if name == 'openai':
    from distill_sbs.teacher.openai_backend import OpenAIBackend  # pylint: disable=g-import-not-at-top
    kwargs = _given(_HTTP_FLAGS)
    if F.teacher_vocabulary:
      from distill_sbs.data import hf_vocab  # pylint: disable=g-import-not-at-top
      from distill_sbs.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
      kwargs['teacher_vocab_hash'] = vocab_lib.vocab_hash(
          hf_vocab.load_hf_vocabulary(F.teacher_vocabulary))
    return OpenAIBackend(**kwargs)
  from distill_sbs.teacher.local_t5 import LocalT5Backend  # pylint: disable=g-import-not-at-top
  return LocalT5Backend(**_given(_LOCAL_FLAGS))


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  # pylint: disable=g-import-not-at-top
  from distill_sbs.teacher import base
  from distill_sbs.teacher import generation
  from distill_sbs.teacher import openai_backend  # Registers its configurables.
  if F.backend == 'local':
    from distill_sbs.teacher import local_t5  # Registers its configurables.
  gin.parse_config_files_and_bindings(F.gin_file, F.gin_bindings)
  config = generation.GenerationConfig(**_given(_GEN_FLAGS))
  sampling = base.SamplingConfig(**_given(_SAMPLING_FLAGS))
  backend = build_backend(F.backend)
  try:
    manifest = generation.run(config, backend, sampling,
                              generation.CarryConfig(**_given(_CARRY_FLAGS)))
  except KeyboardInterrupt:
    print('\ninterrupted: finished parts are kept; rerun the same command to '
          'resume.', file=sys.stderr)
    return 130
  finally:
    backend.close()
  with open(os.path.join(config.out_dir, 'config.gin'), 'w', encoding='utf-8') as f:
    f.write(_flags_header() + gin.operative_config_str())
  c = manifest['counts']
  acc = manifest['teacher_accuracy']
  print(f"{manifest['dataset']}/{manifest['split']}: {c['written']} records written "
        f"({c['parse_failures']} unparsed, {c['failed']} failed) to {config.out_dir}; "
        f"teacher accuracy {'n/a' if acc is None else f'{100 * acc:.1f}%'}; "
        f"{manifest['tokens_per_s'] or 0:.1f} tokens/s", flush=True)
  if c['failed']:
    print(f"{c['failed']} examples failed (see failures.jsonl); rerun the same "
          'command to retry them.', file=sys.stderr)
    return 3
  return 0


def run_main() -> None:
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == '__main__':
  run_main()
