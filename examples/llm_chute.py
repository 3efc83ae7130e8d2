"""An OpenAI-compatible LLM chute in two lines (the template does the rest).

On a GPU host with vLLM installed it runs ``vllm serve`` inside the instance; elsewhere it
serves the bundled SmolLM2-135M-Instruct on CPU (no download)::

    canopy run examples/llm_chute.py:chute --dev --port 8000
    curl -sN localhost:8000/v1/chat/completions \\
      -d '{"messages": [{"role": "user", "content": "Name a colour."}], "stream": true, "max_tokens": 20}'
"""

from canopy.templates.llm import BUNDLED_MODEL, build_llm_chute

chute = build_llm_chute(model=BUNDLED_MODEL, concurrency=4)
