"""What a training run reads: the corpus as a memory-mapped id file, split into training text and the held-out
last ``val_fraction`` (as nanoGPT: ``train = text[:int(n * 0.9)]``), the batches of each epoch, and the
teacher's table when the run distils (model/distill.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist

from model.data import batches_per_epoch, epoch_batches
from model.distill import load_teacher
from model.id_file import default_cache_dir, encode_corpus
from model.train_error import TrainError
from model.vocab import Vocab

__all__ = ["TrainingData", "load_training_data"]


@dataclass
class TrainingData:
    vocab: Vocab
    train_ids: torch.Tensor  # memory-mapped: only the pages a run reads come into memory
    val_ids: torch.Tensor
    corpus_files: list[dict]  # each file's name, size and sha256: the weight file's provenance
    split: dict
    steps_per_epoch: int
    id_file: Path  # the encoded corpus (model/id_file.py); the teacher's table is cached beside it
    teacher_logp: torch.Tensor | None = None  # (train chars, V) log-probabilities, when distilling
    teacher_file: dict | None = None

    def batches(self, args: argparse.Namespace, epoch: int):
        """(X, Y, P) for every batch of an epoch: P holds the training-split positions of X (for the teacher)."""
        distil = self.teacher_logp is not None
        pairs = epoch_batches(
            self.train_ids, args.batch_size, args.time_step, args.sampling, args.seed, epoch, positions=distil
        )
        return pairs if distil else ((X, Y, None) for X, Y in pairs)


def load_training_data(args: argparse.Namespace, vocab: Vocab | None, device: torch.device) -> TrainingData:
    """The corpus encoded with ``vocab`` (a resumed run's) or a new one, split, checked against the batch shape.
    With several processes rank 0 encodes while the others wait, then every rank finds the file unchanged."""
    distributed = torch_dist.is_initialized()
    rank, world = (torch_dist.get_rank(), torch_dist.get_world_size()) if distributed else (0, 1)
    if args.batch_size % world:
        raise TrainError(f"--batch-size {args.batch_size} is not divisible by the {world} processes")
    if distributed and rank != 0:
        torch_dist.barrier()
    corpus = encode_corpus(args.corpus, args.cache_dir or default_cache_dir(), vocab, progress=rank == 0)
    if distributed and rank == 0:
        torch_dist.barrier()

    ids = torch.from_numpy(corpus.ids)
    n = len(ids)
    cut = int(n * (1 - args.val_fraction))
    train_ids, val_ids = ids[:cut], ids[cut:]
    steps_per_epoch = batches_per_epoch(len(train_ids), args.batch_size, args.time_step)
    if steps_per_epoch < 1:
        raise TrainError(
            f"corpus too short: the training split has {len(train_ids)} characters, one batch "
            f"needs about {(args.batch_size + 1) * args.time_step} (lower --batch-size or --time-step)"
        )
    if args.val_fraction > 0 and len(val_ids) < 2:
        raise TrainError("corpus too short: the validation split has fewer than 2 characters")
    split = {
        "val_fraction": args.val_fraction,
        "train_chars": cut,
        "val_chars": n - cut,
        "val": "the last val_fraction of the corpus",
    }
    data = TrainingData(corpus.vocab, train_ids, val_ids, corpus.files, split, steps_per_epoch, corpus.path)
    if args.teacher:
        data.teacher_logp, data.teacher_file = load_teacher(args.teacher, corpus.vocab, train_ids, device, corpus.path)
    return data
