"""Decoder-only decoding's `return_topk`: the top-k collected while decoding is the
teacher-forced `topk_scores` on the generated tokens."""
import numpy as np
import pytest

from distill_sbs.models import decoder_only_decoding
from tests.models.test_decoder_only import CONFIGS, random_params

K = 3


@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('method', ['greedy', 'sample'])
def test_topk_while_decoding_equals_teacher_forced(name, method):
  config = CONFIGS[name]
  params = random_params(config)
  prompts = np.random.default_rng(3).integers(4, config.vocab_size, (3, 6)).astype(np.int32)
  lengths = np.array([6, 1, 4], np.int32)
  # Row 0 stops early on its own greedy token (an EOS of the config).
  kw = dict(max_decode_length=5, prompt_lengths=lengths, method=method, temperature=3.0,
            seed=1)
  free = np.asarray(decoder_only_decoding.generate(config.replace(eos_ids=(10 ** 6,)),
                                                   params, prompts, **kw)[0])
  cfg = config.replace(eos_ids=(10 ** 6, int(free[0, 2])))
  tokens, logp, ids, lps = decoder_only_decoding.generate(cfg, params, prompts,
                                                          return_topk=K, **kw)
  tokens, ids, lps = np.asarray(tokens), np.asarray(ids), np.asarray(lps)
  assert ids.shape == lps.shape == (3, 5, K) and ids.dtype == np.int32
  ended = np.isin(tokens, cfg.eos_ids)
  target_lengths = np.where(ended.any(1), ended.argmax(1) + 1, 5)
  assert target_lengths[0] <= 3
  forced_ids, forced_lps = decoder_only_decoding.topk_scores(
      cfg, params, prompts, tokens, K, prompt_lengths=lengths, target_lengths=target_lengths)
  np.testing.assert_array_equal(ids, np.asarray(forced_ids))
  np.testing.assert_allclose(lps, np.asarray(forced_lps), atol=1e-4)
  for r, n in enumerate(target_lengths):  # zeros after the row ended
    assert (ids[r, n:] == 0).all() and (lps[r, n:] == 0).all()
  if method == 'greedy':
    np.testing.assert_array_equal(ids[0, :target_lengths[0], 0], tokens[0, :target_lengths[0]])
  # The same tokens and log-probs as without return_topk.
  again, again_logp = decoder_only_decoding.generate(cfg, params, prompts, **kw)
  np.testing.assert_array_equal(np.asarray(again), tokens)
  np.testing.assert_allclose(np.asarray(again_logp), np.asarray(logp), atol=1e-5)


def test_beam_search_has_no_topk():
  config = CONFIGS['llama']
  with pytest.raises(ValueError, match='return_topk'):
    decoder_only_decoding.generate(config, random_params(config), np.ones((1, 2), np.int32),
                                   max_decode_length=2, method='beam', return_topk=2)
