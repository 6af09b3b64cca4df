"""Teacher stage: render few-shot prompts, sample a teacher LLM through Ray Data, parse, filter,
and write accepted rationales + rejects to Parquet (`sbs rationales`)."""
