"""Document masking (reset_attention_mask, reset_position_ids, eod_mask_loss): three documents
packed into one sequence give, document by document, the logits each gives alone (fp32, 1e-5) at
TP 1 and TP 2; with masking off the logits are today's (a recorded fixture)."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO, free_port, tiny_cfg

from neox.data.dataset import Packing, document_fields

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

EOD = 2
LENGTHS = (11, 7, 14)  # three documents, each ending with the EOD, packed into 32 positions
FIXTURE = os.path.join(REPO, "tests", "fixtures", "unmasked_logits.pt")


def packed_documents():
    gen = torch.Generator().manual_seed(3)
    docs = [torch.cat([torch.randint(3, 101, (n - 1,), generator=gen), torch.tensor([EOD])]) for n in LENGTHS]
    return docs, torch.cat(docs).unsqueeze(0)


def max_difference_per_document(tp):
    """Our model at this process's TP: packed (segments and positions from the EODs) against each
    document alone; and the packed logits without masking."""
    from neox.model.llama import LlamaModel

    cfg = tiny_cfg(seq_length=32, max_position_embeddings=32, model_parallel_size=tp, num_gpus=tp,
                   reset_attention_mask=True, reset_position_ids=True)
    model = LlamaModel(cfg).eval()
    model.init_weights(7)
    docs, packed = packed_documents()
    fields = document_fields(packed, Packing(eod=EOD, attention=True, positions=True))
    with torch.no_grad():
        masked = model.gather_logits(model(packed, **fields))[0]
        unmasked = model.gather_logits(model(packed))[0]
        diffs, start = [], 0
        for doc in docs:
            alone = model.gather_logits(model(doc.unsqueeze(0)))[0]
            diffs.append((masked[start:start + len(doc)] - alone).abs().max().item())
            start += len(doc)
    return diffs, unmasked


def _tp2_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from neox.launch import distributed

    distributed.init_distributed(2)
    result = max_difference_per_document(2)
    if rank == 0:
        torch.save(result, out)
    distributed.destroy()


def test_document_fields_follow_the_eod_tokens():
    tokens = torch.tensor([[5, 6, EOD, 7, EOD, 8, 9, 4]])
    f = document_fields(tokens, Packing(eod=EOD, attention=True, positions=True))
    assert f["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]  # an EOD belongs to the document it ends
    assert f["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert set(document_fields(tokens, Packing(eod=EOD, attention=False, positions=True))) == {"position_ids"}


def test_packed_documents_equal_each_document_alone_at_tp1_and_tp2(single_process_group, tmp_path):
    diffs, unmasked = max_difference_per_document(1)
    assert max(diffs) < 1e-5, diffs
    # masking off: the logits the model gave before document masking existed (recorded at commit 87cf73a)
    assert (unmasked - torch.load(FIXTURE)).abs().max().item() < 1e-6
    # without the masks the documents do see each other: the check above can fail
    from neox.model.llama import LlamaModel

    cfg = tiny_cfg(seq_length=32, max_position_embeddings=32)
    model = LlamaModel(cfg).eval()
    model.init_weights(7)
    docs, packed = packed_documents()
    with torch.no_grad():
        second_alone = model.gather_logits(model(docs[1].unsqueeze(0)))[0]
    assert (unmasked[11:18] - second_alone).abs().max().item() > 1e-2

    out = str(tmp_path / "tp2.pt")
    mp.start_processes(_tp2_worker, args=(free_port(), out), nprocs=2, start_method="spawn")
    diffs_tp2, unmasked_tp2 = torch.load(out)
    assert max(diffs_tp2) < 1e-5, diffs_tp2
    assert (unmasked_tp2 - unmasked).abs().max().item() < 1e-5  # TP 2 = TP 1


if __name__ == "__main__":  # re-record the fixture (only for an intended change of the model's numbers)
    from neox.launch import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    distributed.init_distributed(1)
    torch.save(max_difference_per_document(1)[1], FIXTURE)


def test_eod_mask_loss_drops_the_loss_where_the_input_is_the_eod(single_process_group, toy_data, tmp_path,
                                                                monkeypatch):
    """megatron-core's dataset option, as GPT-NeoX meant it: no loss where the input token is the EOD."""
    from neox.config import load_config
    from neox.data.dataset import build_tokenizer, build_train_dataset, get_micro_batch

    monkeypatch.chdir(REPO)  # smoke.yml's data paths are relative to the repository
    cfg = load_config([os.path.join(REPO, "llemma_configs", "smoke.yml")],
                      ["eod_mask_loss=true", "train_iters=2", "lr_decay_iters=2", "warmup_iters=1",
                       f"data_cache_dir={tmp_path}", "num_gpus=1", "model_parallel_size=1"])
    tokenizer = build_tokenizer(cfg)
    batch = get_micro_batch(build_train_dataset(cfg, tokenizer), 0, 0, 0, 4, 1, 8)
    eod = batch["tokens"] == tokenizer.eod
    assert eod.any() and (batch["loss_mask"][eod] == 0).all() and (batch["loss_mask"][~eod] == 1).all()


def test_flex_attention_path_equals_the_dense_mask(single_process_group):
    """On CUDA packed documents go through FlexAttention's block masks; here (eager, forward only:
    uncompiled FlexAttention has no exact backward) its logits equal SDPA with the dense mask, for a
    sliding layer (window 8) and a full one."""
    from neox.model.llama import LlamaModel

    cfg = tiny_cfg(seq_length=32, max_position_embeddings=32, reset_attention_mask=True, reset_position_ids=True,
                   num_layers=2, sliding_window=8, sliding_window_pattern=2)
    assert cfg.model.sliding_layers() == [0]
    model = LlamaModel(cfg).eval()
    model.init_weights(7)
    _, packed = packed_documents()
    fields = document_fields(packed, Packing(eod=EOD, attention=True, positions=True))
    logits = {}
    for flex in (False, True):
        model.use_flex_for_documents = flex
        with torch.no_grad():
            logits[flex] = model.gather_logits(model(packed, **fields))
    assert (logits[True] - logits[False]).abs().max().item() < 1e-5
