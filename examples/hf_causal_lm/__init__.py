"""A Hugging Face causal language model swept with llmpi: model, data and loss factories (``lm.py``) and a tool
that writes a tiny random model and token file to try them offline (``make_tiny.py``). See README.md here."""
