"""The model: Llama (``llama``), the one table of how each weight is split under tensor parallelism
(``partition``), Hugging Face names and families (``hf_compat``), the chunked head loss, FLOPs and
the memory/time planner. Nothing here knows about configs on disk, data or checkpoints."""
