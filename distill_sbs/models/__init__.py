"""distill_sbs.models: the T5 network, its config, decoding and HF checkpoint I/O.

  T5Config                      frozen hyper-parameters (T5X field names), gin-configurable
  Transformer(config)           flax module with T5X's network interface and parameter tree
  generate(config, params, encoder_input_tokens, *, max_decode_length, method, ...)
                                -> (tokens [b, L] int32, 0 after EOS; log_probs [b])
  score(config, params, encoder_input_tokens, decoder_target_tokens) -> [b, l] log-probs
  topk_scores(config, params, encoder_input_tokens, decoder_target_tokens, k)
                                -> (ids [b, l, k] int32, log_probs [b, l, k])
  load_hf_checkpoint(path) -> (T5Config, params); save_hf_checkpoint(path, config, params)
  load_vocabulary(path) -> seqio.SentencePieceVocabulary | None
  DecoderOnlyConfig, DecoderOnlyTransformer(config)
                                Llama / Qwen2 / Qwen3 / Gemma 3 text decoder-only LM
                                (T5X decoder-only interface); `generate` with a
                                DecoderOnlyConfig takes left-aligned prompts and
                                `prompt_lengths`; `load_hf_checkpoint` dispatches on
                                config.json's model_type
Checkpoint formats (HF, distill-sbs runs, T5X Orbax / legacy; not imported
here): `distill_sbs.models.checkpoint_formats` (`read_params`, `assign_params`,
`write_t5x_checkpoint`, ...).

`params` everywhere is the content of the flax 'params' collection (nested
dicts of arrays); boxed or `{'params': ...}`-wrapped trees are accepted too.
"""
from distill_sbs.models.config import T5Config
from distill_sbs.models.decoder_only import DecoderOnlyTransformer
from distill_sbs.models.decoder_only_config import DecoderOnlyConfig
from distill_sbs.models.decoding import generate, score, topk_scores
from distill_sbs.models.hf_io import load_hf_checkpoint, load_vocabulary, save_hf_checkpoint
from distill_sbs.models.network import Transformer

__all__ = ['T5Config', 'Transformer', 'DecoderOnlyConfig', 'DecoderOnlyTransformer',
           'generate', 'score', 'topk_scores', 'load_hf_checkpoint', 'save_hf_checkpoint',
           'load_vocabulary']
