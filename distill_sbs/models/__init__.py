"""distill_sbs.models: the T5 network, its config, decoding and HF checkpoint I/O."""
from distill_sbs.models.config import T5Config
from distill_sbs.models.decoding import generate, score, topk_scores
from distill_sbs.models.hf_io import load_hf_checkpoint, load_vocabulary, save_hf_checkpoint
from distill_sbs.models.network import Transformer

__all__ = ['T5Config', 'Transformer', 'generate', 'score', 'topk_scores',
           'load_hf_checkpoint', 'save_hf_checkpoint', 'load_vocabulary']
