"""A SentencePiece model with pieces chosen by the test (no training)."""
import pathlib
from typing import Sequence

from sentencepiece import sentencepiece_model_pb2 as pb


def write_spm_model(path: pathlib.Path, pieces: Sequence[str]) -> str:
  """Unigram model: ids 0 pad, 1 eos, 2 unk, then `pieces` from id 3 (scores
  fall with the index); identity normaliser with a dummy prefix."""
  m = pb.ModelProto()
  m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
  m.trainer_spec.pad_id, m.trainer_spec.eos_id, m.trainer_spec.unk_id = 0, 1, 2
  m.trainer_spec.bos_id = -1
  m.normalizer_spec.name = 'identity'
  m.normalizer_spec.add_dummy_prefix = True
  m.normalizer_spec.remove_extra_whitespaces = True
  m.normalizer_spec.escape_whitespaces = True
  kinds = pb.ModelProto.SentencePiece
  for piece, kind in (('<pad>', kinds.CONTROL), ('</s>', kinds.CONTROL), ('<unk>', kinds.UNKNOWN)):
    m.pieces.add(piece=piece, score=0.0, type=kind)
  for i, piece in enumerate(pieces):
    m.pieces.add(piece=piece, score=-0.01 * i, type=kinds.NORMAL)
  path.write_bytes(m.SerializeToString())
  return str(path)
