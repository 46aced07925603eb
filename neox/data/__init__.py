"""Data: tokenizers (SentencePiece, tokenizer.json), preprocessing into megatron-core indexed
datasets, the training dataset and mixture, data checks, n-gram overlap and decontamination."""
