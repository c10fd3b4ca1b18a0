"""distill_sbs.teacher: few-shot CoT prompts, teacher backends, resumable generation.

Modules (imported explicitly; this package imports nothing heavy):
  prompts          prompt files (tasks/data/prompts/{ds}.json) -> `Prompt`s
  base             `SamplingConfig`, `Completion`, `GenerationResult`,
                   the `TeacherBackend` Protocol
  openai_backend   `OpenAIBackend` (OpenAI-compatible HTTP), `RetryPolicy`
  local_t5         `LocalT5Backend` (alias `LocalBackend`): T5 or decoder-only
                   (Llama / Qwen / Gemma 3) in JAX, top-k teacher log-probs
  self_consistency majority vote over sampled completions
  inputs           prepared records or JSON-lines inputs
  store            crash-safe parts, done-ids index, failures
  generation       `GenerationConfig`, `run(config, backend, sampling)`
  loopback         a loopback OpenAI-compatible server (tests, benchmarks);
                   `LocalBackendResponder` serves a local backend through it
Entry point: `python -m distill_sbs.generate_rationales`.
"""
