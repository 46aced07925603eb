"""Training data: tokenized .bin/.idx files read through megatron-core's datasets.

Sample order is a pure function of (seed, global sample index): update ``s`` (from 0) consumes
global samples ``[s*G, (s+1)*G)`` (G = global batch); within an update, micro-batch ``j`` of
data-parallel rank ``r`` takes ``micro`` consecutive samples starting at
``s*G + j*micro*dp + r*micro``. Tensor-parallel ranks of one data-parallel replica read the same
samples. So the samples of an update do not depend on how many ranks share it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from neox.data.names import component_name
from neox.data.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer  # noqa: F401  (the run's tokenizer)
from neox.launch import faults

logging.getLogger("megatron.core.datasets").setLevel(logging.WARNING)


def build_tokenizer(cfg: Any) -> HFTokenizer | SentencePieceTokenizer:
    """The run's tokenizer: vocab_file, of the kind tokenizer_type names (SPMTokenizer or HFTokenizer)."""
    return load_tokenizer(cfg.data.vocab_file, cfg.data.tokenizer_type)


def data_fingerprint(prefixes: Iterable[str]) -> str:
    """Identity of the data files (path, size, mtime): a changed file gets a fresh index cache."""
    h = hashlib.sha256()
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            path = os.path.abspath(prefix + ext)
            st = os.stat(path)
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def data_identity(prefixes: Iterable[str]) -> dict:
    """What a resume checks to know the data did not change under the run: per file its size and
    a hash of its content (all of the .idx; 1 MiB at the start, middle and end of the .bin).
    Content, not mtime, so copying the data to another disk keeps the identity."""
    out = {}
    for prefix in prefixes:
        for ext in (".idx", ".bin"):
            path = prefix + ext
            size = os.path.getsize(path)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                if ext == ".idx":
                    for chunk in iter(lambda: f.read(1 << 24), b""):
                        h.update(chunk)
                else:
                    for offset in sorted({0, max(0, size // 2 - (1 << 19)), max(0, size - (1 << 20))}):
                        f.seek(offset)
                        h.update(f.read(1 << 20))
            out[path] = {"size": size, "sha256": h.hexdigest()}
    return out


def cache_dir(cfg: Any, prefixes: Iterable[str]) -> str:
    """Index caches live under data_cache_dir (default: beside the first training file), one
    subdirectory per data fingerprint; megatron-core keys the files inside by seed, sequence
    length, sample counts, weights and tokenizer."""
    d = cfg.data
    root = d.data_cache_dir or os.path.join(os.path.dirname(os.path.abspath(d.train_data_paths[0])),
                                            "index-cache")
    return os.path.join(root, data_fingerprint(prefixes))


def _dataset_config(cfg, tokenizer, prefixes) -> dict:
    return dict(random_seed=cfg.misc.seed, sequence_length=cfg.model.seq_length,
                path_to_cache=cache_dir(cfg, prefixes), tokenizer=tokenizer, reset_position_ids=False,
                reset_attention_mask=False, eod_mask_loss=cfg.model.eod_mask_loss, create_attention_mask=False)


def build_train_dataset(cfg: Any, tokenizer: Any) -> Any:
    """A blended dataset with at least train_iters x global batch samples (by phase with data_phases)."""
    d = cfg.data
    weights = d.train_data_weights or [1.0] * len(d.train_data_paths)
    # room for the batches the NaN/spike guard may put on its skip-list (neox.train.guard)
    spare_batches = cfg.guard.max_rollbacks * cfg.guard.max_bad_steps_in_a_row
    num_samples = (cfg.schedule.train_iters + spare_batches) * cfg.batch.train_batch_size
    faults.pause("index")  # test-only: a slow build, to stop a job in the middle of it
    if d.data_phases:
        return build_phased_dataset(cfg, tokenizer, weights, num_samples)
    config = GPTDatasetConfig(blend_per_split=[(list(d.train_data_paths), list(weights)), None, None],
                              **_dataset_config(cfg, tokenizer, d.train_data_paths))
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, None, None],
                                                lambda: True, config).build()
    return train


class PhasedBlend(torch.utils.data.Dataset):
    """Samples of several components mixed by phase: phase p covers global samples
    [first_p, first_{p+1}) and draws them with its own weights, in megatron-core's blending order
    (each component as close to its weight as the samples so far allow). A component continues
    where the previous phase left it: no document is drawn twice because the weights changed.
    ``dataset_index`` / ``dataset_sample_index`` as in megatron-core's BlendedDataset."""

    def __init__(self, phases: list[tuple[int, list[float]]], total: int):
        from megatron.core.datasets import helpers

        self.datasets: list[Any] = []
        k = len(phases[0][1])
        index, within = [], []
        used = np.zeros(k, dtype=np.int64)
        ends = [first for first, _ in phases[1:]] + [total]
        for (first, weights), end in zip(phases, ends):
            n = max(0, end - first)
            di, dsi = np.zeros(n, dtype=np.int16), np.zeros(n, dtype=np.int64)
            w = np.asarray(weights, dtype=np.float64)
            helpers.build_blending_indices(di, dsi, w / w.sum(), k, n, False)
            index.append(di)
            within.append(dsi + used[di])
            used += np.bincount(di, minlength=k)
        self.dataset_index = np.concatenate(index)
        self.dataset_sample_index = np.concatenate(within)
        self.samples_per_component = used  # how many samples each component must hold

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i: int) -> dict:
        return self.datasets[self.dataset_index[i]][int(self.dataset_sample_index[i])]


def phase_starts(cfg: Any, weights: list[float]) -> list[tuple[int, list[float]]]:
    """(first global sample, weights) of each phase: the first from sample 0 with train_data_weights."""
    g = cfg.batch.train_batch_size
    return [(0, list(weights))] + [(p["after_step"] * g, p["weights"]) for p in cfg.data.data_phases]


def build_phased_dataset(cfg: Any, tokenizer: Any, weights: list[float], num_samples: int) -> PhasedBlend:
    """PhasedBlend over one megatron-core GPTDataset per component, each as long as its phases need."""
    blend = PhasedBlend(phase_starts(cfg, weights), num_samples)
    for prefix, need in zip(cfg.data.train_data_paths, blend.samples_per_component):
        config = GPTDatasetConfig(blend_per_split=[([prefix], None), None, None],
                                  **_dataset_config(cfg, tokenizer, [prefix]))
        part, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [max(1, int(need)), None, None],
                                                   lambda: True, config).build()
        blend.datasets.append(part)
    return blend


def build_eval_datasets(cfg: Any, tokenizer: Any, num_samples: int) -> dict:
    """One dataset per validation component (e.g. arxiv, open-web-math, algebraic-stack)."""
    out = {}
    for prefix in cfg.data.valid_data_paths:
        config = GPTDatasetConfig(blend_per_split=[None, ([prefix], None), None],
                                  **_dataset_config(cfg, tokenizer, [prefix]))
        _, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [None, num_samples, None],
                                                    lambda: True, config).build()
        out[component_name(prefix)] = valid
    return out


def collate(samples: list[dict], packing: Packing | None = None) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("tokens", "labels", "loss_mask")}
    if packing is not None:
        batch.update(document_fields(batch["tokens"], packing))
    return batch


@dataclass(frozen=True)
class Packing:
    """How packed documents are told apart (the model keys reset_attention_mask / reset_position_ids)."""
    eod: int  # the tokenizer's end-of-document id: it ends its document
    attention: bool  # segment_ids: attention stays within a document
    positions: bool  # position_ids: positions restart at each document


def packing_of(cfg: Any, tokenizer: Any) -> Packing | None:
    m = cfg.model
    if not (m.reset_attention_mask or m.reset_position_ids):
        return None
    return Packing(eod=tokenizer.eod, attention=m.reset_attention_mask, positions=m.reset_position_ids)


def document_fields(tokens: torch.Tensor, packing: Packing) -> dict:
    """segment_ids [b, s] (the index of each position's document: an EOD belongs to the document it
    ends) and/or position_ids [b, s] (0 at each document's first position), as GPT-NeoX and Megatron
    derive them from the EOD tokens of the input."""
    ends = (tokens == packing.eod).long()
    segments = torch.cumsum(ends, dim=1) - ends  # EODs strictly before each position
    out = {}
    if packing.attention:
        out["segment_ids"] = segments
    if packing.positions:
        b, s = tokens.shape
        index = torch.arange(s).expand(b, s)
        starts = torch.cat([torch.ones(b, 1, dtype=torch.long), ends[:, :-1]], dim=1).bool()
        out["position_ids"] = index - torch.cummax(torch.where(starts, index, 0), dim=1).values
    return out


def micro_batch_indices(step: int, micro_index: int, dp_rank: int, micro: int, dp: int,
                        global_batch: int) -> list[int]:
    start = step * global_batch + micro_index * micro * dp + dp_rank * micro
    return list(range(start, start + micro))


def get_micro_batch(dataset: Any, step: int, micro_index: int, dp_rank: int, micro: int, dp: int,
                    global_batch: int, packing: Packing | None = None) -> dict:
    idx = micro_batch_indices(step, micro_index, dp_rank, micro, dp, global_batch)
    return collate([dataset[i] for i in idx], packing)


# ----------------------------------------------------------------------------- mixture accounting


def component_of_sample(dataset: Any) -> np.ndarray:
    """Per global sample, the index of its training component (an array over all samples)."""
    import numpy as np

    if hasattr(dataset, "dataset_index"):  # megatron BlendedDataset
        return np.asarray(dataset.dataset_index)
    return np.zeros(len(dataset), dtype=np.int16)  # a single component


def mixture_table(dataset: Any, cfg: Any) -> list[dict]:
    """Per component: tokens available, tokens the run will draw, epochs, and share of samples
    (with data_phases, also each phase's weight and share: ``phases``)."""
    paths = cfg.data.train_data_paths
    parts = dataset.datasets if hasattr(dataset, "datasets") else [dataset]
    total = cfg.schedule.train_iters * cfg.batch.train_batch_size
    of_sample = component_of_sample(dataset)[:total]
    drawn = np.bincount(of_sample, minlength=len(paths))
    weights = cfg.data.train_data_weights or [1.0] * len(paths)
    starts = phase_starts(cfg, weights) if cfg.data.data_phases else []
    rows = []
    for i, (prefix, part) in enumerate(zip(paths, parts)):
        available = int(part.dataset.sequence_lengths.sum())
        tokens = int(drawn[i]) * cfg.model.seq_length
        row = {"component": component_name(prefix), "path": prefix,
               "weight": weights[i] / sum(weights), "tokens_available": available,
               "tokens_drawn": tokens, "epochs": tokens / max(available, 1),
               "share": int(drawn[i]) / total}
        if starts:
            bounds = [first for first, _ in starts[1:]] + [total]
            row["phases"] = [{"from_sample": first, "weight": w[i] / sum(w),
                              "share": float(np.mean(of_sample[first:end] == i)) if end > first else 0.0}
                             for (first, w), end in zip(starts, bounds)]
        rows.append(row)
    return rows


def format_mixture(rows: Iterable[dict]) -> str:
    rows = list(rows)
    phases = len(rows[0].get("phases", [])) if rows else 0
    head = "".join(f" {f'phase {p}':>15}" for p in range(phases))
    lines = [f"{'component':<20} {'weight':>7} {'available':>15} {'drawn':>15} {'epochs':>7} {'share':>7}{head}"]
    for r in rows:
        cells = "".join(f" {ph['weight']:>7.4f}/{ph['share']:<7.4f}" for ph in r.get("phases", []))
        lines.append(f"{r['component']:<20} {r['weight']:>7.4f} {r['tokens_available']:>15,} "
                     f"{r['tokens_drawn']:>15,} {r['epochs']:>7.3f} {r['share']:>7.4f}{cells}")
    if phases:
        lines.append("(phase columns: weight / share of that phase's samples; the phases start at global samples "
                     + ", ".join(f"{ph['from_sample']:,}" for ph in rows[0]["phases"]) + ")")
    return "\n".join(lines)


class Prefetcher:
    """Builds the next micro-batch on a background thread while the current one trains, so data
    loading stays off the critical path. ``get(key, next_key)`` returns the batch for ``key`` (a
    (batch index, micro index) pair) and starts on ``next_key``; a prefetch for a key that is not
    asked for next (after a rollback) is dropped."""

    def __init__(self, dataset: Any, dp_rank: int, micro: int, dp: int, global_batch: int,
                 packing: Packing | None = None):
        from concurrent.futures import Future, ThreadPoolExecutor

        self.fetch = lambda key: get_micro_batch(dataset, key[0], key[1], dp_rank, micro, dp, global_batch, packing)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self.pending: tuple[tuple[int, int], Future[dict]] | None = None  # (key, future)

    def get(self, key: tuple[int, int], next_key: tuple[int, int] | None = None) -> dict:
        if self.pending is not None and self.pending[0] == key:
            batch = self.pending[1].result()
        else:
            batch = self.fetch(key)
        self.pending = (next_key, self.pool.submit(self.fetch, next_key)) if next_key is not None else None
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=True)
