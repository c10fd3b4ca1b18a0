"""Session fixtures: tiny random HF T5 models saved with `save_pretrained`."""
import pytest

from tests.models.helpers import build_hf_t5


@pytest.fixture(scope='session', params=['v1_1', 't5'])
def hf_dir(request, tmp_path_factory):
  """(kind, directory, model) of a saved tiny HF T5."""
  model = build_hf_t5(request.param)
  path = tmp_path_factory.mktemp(f'hf_{request.param}')
  model.save_pretrained(path, safe_serialization=True)
  return request.param, path, model
