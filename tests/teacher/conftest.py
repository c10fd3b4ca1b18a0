"""Fixtures for the teacher tests: tiny prepared cqa data and a fake teacher."""
import json

import pytest

from distill_sbs.data import formats
from distill_sbs.data import schema
from tests.teacher.teacher_helpers import CqaTeacher


@pytest.fixture(scope='session')
def cqa_rows(raw_dir):
  with open(raw_dir / 'cqa' / 'cqa_test.json', encoding='utf-8') as f:
    return [json.loads(next(f)) for _ in range(48)]


@pytest.fixture(scope='session')
def cqa_data_dir(cqa_rows, tmp_path_factory):
  """`{data_dir}/cqa/test.tfrecord-*` with 48 prepared records (id, inputs, label)."""
  root = tmp_path_factory.mktemp('teacher_data')
  recs = [{'id': formats.row_id('cqa', r, 'test', i),
           'inputs': formats.format_input('cqa', r),
           'label': formats.gold_label('cqa', r)} for i, r in enumerate(cqa_rows)]
  schema.write_shards(str(root / 'cqa'), 'test', recs, num_shards=2)
  return root


@pytest.fixture(scope='session')
def cqa_teacher(cqa_rows):
  return CqaTeacher({formats.format_input('cqa', r): r['answer'] for r in cqa_rows})
