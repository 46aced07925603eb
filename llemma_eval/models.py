"""lm-eval backends whose rolling (perplexity) requests put BOS exactly once before a document.

lm-eval's loglikelihood_rolling prepends its prefix token (BOS) to the document's tokens, and those
tokens are encoded with the tokenizer's own add_bos_token, so a Llama export scores "<s> <s> text":
every document pays log p(<s> | <s>). Here the document is encoded without special tokens while a
rolling request is being built, so the model sees "<s> text" and every text token is scored.
Generation and loglikelihood requests are unchanged.

The hf backend also returns float32 logits whatever the weights' dtype: lm-eval takes the
log-softmax and sums the log-probabilities in the logits' dtype, and in bf16 that put the
perplexity 0.8% above the float32 value. vLLM returns float32 log-probabilities itself.
"""

from collections.abc import Sequence
from typing import Any


class _BosOnceRolling:
    _in_rolling = False

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        self._in_rolling = True
        try:
            # a mixin: super() is the lm-eval LM it is combined with in make_lm
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)  # type: ignore[misc]
        finally:
            self._in_rolling = False

    def tok_encode(self, string: str | Sequence[str], add_special_tokens: bool | None = None,
                   **kwargs: Any) -> list[int] | list[list[int]]:
        if self._in_rolling:
            add_special_tokens = False
        # the mixin's super() is the lm-eval LM of make_lm, which mypy cannot see
        return super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)  # type: ignore[misc]


class _Float32Logits:
    def _model_call(self, *args, **kwargs):
        return super()._model_call(*args, **kwargs).float()


def make_lm(backend: str, model_dir: str, batch_size: int | str | None = None, device: str = "cpu",
            dtype: str = "auto", tensor_parallel_size: int = 1, max_length: int | None = None,
            seed: int = 1234) -> Any:
    """An lm-eval LM for an HF directory: 'hf' (CPU or GPU) or 'vllm' (GPUs)."""
    default_batch = {"hf": 1, "vllm": "auto"}.get(backend)  # vLLM schedules its own batches
    common = {"pretrained": model_dir, "dtype": dtype, "batch_size": batch_size or default_batch}
    if max_length:
        common["max_length"] = max_length
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        cls = type("BosOnceHFLM", (_BosOnceRolling, _Float32Logits, HFLM), {})
        return cls(device=device, **common)
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        cls = type("BosOnceVLLM", (_BosOnceRolling, VLLM), {})
        return cls(tensor_parallel_size=tensor_parallel_size, seed=seed, **common)
    raise ValueError(f"unknown backend {backend!r} (hf or vllm)")
