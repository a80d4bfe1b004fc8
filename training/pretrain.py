"""Continual pretraining of open_clip models with the contrastive (InfoNCE) loss.

    python -m training.pretrain --config small-vit --train captions.csv --val val.csv \
        --epochs 30 --batch-size 64 --lr 1e-3 --warmup 20 --out runs/demo
    python -m training.pretrain --config ViT-B-32 --checkpoint RemoteCLIP-ViT-B-32.pt --train my.csv \
        --epochs 5 --batch-size 64 --accum-steps 4 --lr 1e-5 --precision amp --out runs/ft
    python -m training.pretrain --config ViT-B-32 --remoteclip ...      # the same, downloaded from Hugging Face
    torchrun --nproc_per_node 4 -m training.pretrain ...        # DDP (nccl on GPU, gloo on CPU)

Pieces are open_clip's own: ``create_model`` from a registered JSON config (training/configs/*.json
are registered by file name), ``ClipLoss``, ``image_transform`` and the CLIP tokenizer.

Caption table: CSV with ``image,caption`` (+ optional ``source``, ``split``); image paths are relative to
the CSV's folder unless absolute. With a ``split`` column, ``--train`` uses the rows whose split is ``train``
(or empty) and ``--val`` the rows whose split is ``val``/``test``.

Output folder: ``checkpoint_last.pt`` (model + optimizer + scheduler + scaler + epoch + step, written after
every epoch, atomically), ``model.pt`` (plain state dict: what ``training.export --checkpoint`` loads),
``log.jsonl`` (one line per optimiser step and per epoch) and ``run.json`` (arguments and model config).

Gradient accumulation here sums micro-batch gradients, so negatives come from each micro-batch only
(open_clip's feature-caching variant is not needed at the batch sizes this project trains at).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path

from core.errors import InvalidInput, ModelError, RemoteClipError, SourceUnreadable
from training.checkpoints import eval_transform

# --- data ---------------------------------------------------------------------------------------------

def read_captions(path, splits: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(absolute image path, caption) pairs from a caption table; ``splits`` filters on the split column."""
    path = Path(path)
    if not path.is_file():
        raise SourceUnreadable(f"Caption table {path} not found.", "Check the path given to --train/--val.", path=path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "image" not in cols or "caption" not in cols:
            raise InvalidInput(f"Caption table {path} has columns {cols}, not image and caption.",
                                  "Write a CSV with a header line 'image,caption[,source][,split]'.", path=path)
        rows = []
        for r in reader:
            if splits is not None and "split" in cols and (r.get("split") or "").strip() not in splits:
                continue
            img = Path(r["image"])
            rows.append((str(img if img.is_absolute() else (path.parent / img).resolve()), r["caption"]))
    if not rows:
        raise InvalidInput(f"Caption table {path} has no rows" + (f" with split in {splits}" if splits else "")
                              + ".", "Check the table and its split column.", path=path)
    missing = [p for p, _ in rows if not os.path.isfile(p)]
    if missing:
        raise InvalidInput(f"{len(missing)} images of {path} do not exist, e.g. {missing[0]}.",
                              "Image paths are relative to the CSV's folder unless absolute; fix the table.", path=path)
    return rows


class CaptionDataset:
    """Images decoded once and kept in memory at ``keep`` px on the short side (the datasets here are
    small; re-decoding 400 px JPEGs every epoch would dominate a CPU run)."""

    def __init__(self, rows, transform, tokenizer, keep: int | None = None):
        from PIL import Image

        self.rows = rows
        self.transform = transform
        self.tokenizer = tokenizer
        self.images = {}
        for p, _ in rows:
            if p in self.images:
                continue
            with Image.open(p) as im:
                im = im.convert("RGB")
                if keep and min(im.size) > keep:
                    s = keep / min(im.size)
                    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
                self.images[p] = im.copy()
        self.tokens = tokenizer([c for _, c in rows])

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.transform(self.images[self.rows[i][0]]), self.tokens[i]


def train_transform(preprocess_cfg: dict, scale=(0.5, 1.0)):
    """open_clip's training transform (RandomResizedCrop) after random flips and right-angle rotations:
    overhead imagery has no canonical orientation."""
    import open_clip
    from torchvision import transforms as T

    class RandomRot90:
        def __call__(self, im):
            k = random.randint(0, 3)
            return im if k == 0 else im.rotate(90 * k)

    base = open_clip.image_transform(preprocess_cfg["size"], is_train=True, mean=preprocess_cfg.get("mean"),
                                     std=preprocess_cfg.get("std"), aug_cfg={"scale": scale})
    return T.Compose([T.RandomHorizontalFlip(), RandomRot90(), base])


# --- model ----------------------------------------------------------------------------------------------

def build(arch: str, checkpoint: str | None = None, pretrained: str | None = None,
          activation: str = "quick_gelu", seed: int = 0):
    """(model in train mode, preprocess_cfg, model_config); random init from ``seed`` unless weights given."""
    import torch

    from training import checkpoints

    torch.manual_seed(seed)
    random.seed(seed)  # the rotation augmentation
    state = checkpoints.read_state_dict(checkpoint) if checkpoint else None
    model, pp, cfg = checkpoints.build_model(arch, state, activation, pretrained=pretrained)
    return model.train(), pp, cfg


def cosine_lr(step: int, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps to ``base_lr``, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    e = min(step - warmup, span)
    return min_lr + 0.5 * (1 + math.cos(math.pi * e / span)) * (base_lr - min_lr)


# --- distributed -----------------------------------------------------------------------------------------

def dist_info() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_distributed(device_type: str):
    import torch.distributed as dist

    rank, world, local = dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return rank, world, local


# --- training ------------------------------------------------------------------------------------------------

def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_resume_state(path: Path, device="cpu") -> dict:
    """A checkpoint_last.pt written by this tool: tensors and plain containers only, never code
    (torch's weights_only unpickler; a crafted checkpoint could otherwise run anything)."""
    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelError(f"{path} holds objects a training checkpoint never has, so it was not loaded "
                              f"({str(e).splitlines()[0]}).", "Resume only from checkpoints this tool wrote; "
                              "start a new run without --resume, or into another --out folder.", path=path) from None


def contrastive_val_loss(model, loader, loss_fn, device) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for images, texts in loader:
            img, txt, scale = model(images.to(device), texts.to(device))[:3]
            total += float(loss_fn(img.float(), txt.float(), scale)) * len(images)
            n += len(images)
    model.train()
    return total / max(n, 1)


def train(args) -> dict:
    """Run training as parsed by ``parser()``; returns the last epoch's summary."""
    import numpy as np
    import open_clip
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    device_type = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu"
    rank, world, local = setup_distributed(device_type)
    device = torch.device(f"cuda:{local}" if device_type == "cuda" else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision if args.precision != "auto" else ("amp" if device_type == "cuda" else "fp32")
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    from training import checkpoints

    checkpoints.register_local_configs()
    if args.remoteclip:  # every rank asks; huggingface_hub's cache lock makes the others wait for one download
        if args.config not in checkpoints.REMOTECLIP_ARCHS:
            raise InvalidInput(f"RemoteCLIP publishes no {args.config} checkpoint.",
                                  f"Use --config {' / '.join(checkpoints.REMOTECLIP_ARCHS)} with --remoteclip, "
                                  "or pass a file with --checkpoint.", param="config")
        args.checkpoint = str(checkpoints.download_remoteclip(args.config))
    model, pp, cfg = build(args.config, args.checkpoint, args.pretrained, args.activation, args.seed)
    model.to(device)
    tokenizer = open_clip.get_tokenizer(args.config)

    rows = read_captions(args.train, ("train", ""))
    keep = int(pp["size"] if isinstance(pp["size"], int) else max(pp["size"])) * 2
    ds = CaptionDataset(rows, train_transform(pp, tuple(args.crop_scale)), tokenizer, keep)
    val_loader = None
    if args.val:
        vrows = read_captions(args.val, ("val", "test", ""))
        val_loader = DataLoader(CaptionDataset(vrows, eval_transform(pp), tokenizer, keep),
                                batch_size=args.batch_size, shuffle=False)

    gen = torch.Generator().manual_seed(args.seed)
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
        loader = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                            num_workers=args.workers)
    else:
        sampler = None
        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=gen,
                            num_workers=args.workers)
    if len(loader) == 0:
        raise InvalidInput(f"{len(ds)} training pairs make no full batch of {args.batch_size}"
                              + (f" on each of {world} processes" if world > 1 else "") + ".",
                              "Lower --batch-size or add captions.")
    steps_per_epoch = max(1, len(loader) // args.accum_steps)
    total_steps = steps_per_epoch * args.epochs

    # no weight decay on gains, biases, embeddings and the logit scale (open_clip's training recipe)
    def exclude(n, p):
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n or "embedding" in n

    params = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in params if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
         {"params": [p for n, p in params if not exclude(n, p) and p.requires_grad], "weight_decay": args.wd}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, 1.0, args.warmup, total_steps, args.min_lr / args.lr if args.lr else 0.0))
    use_amp = precision == "amp"
    amp_dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device_type, enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, step = 0, 0
    ckpt_path = out / "checkpoint_last.pt"
    if args.resume:
        if not ckpt_path.is_file():
            raise SourceUnreadable(f"--resume given but {ckpt_path} does not exist.",
                                  "Drop --resume to start a new run, or point --out at the run to continue.", path=ckpt_path)
        ck = load_resume_state(ckpt_path, device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, step = int(ck["epoch"]), int(ck["step"])
        torch.set_rng_state(ck["rng"]["torch"])
        gen.set_state(ck["rng"]["loader"])
        random.setstate(ck["rng"]["python"])

    ddp_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[local] if device_type == "cuda" else None)
    loss_fn = open_clip.ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, rank=rank, world_size=world)

    def log(rec):
        if rank == 0:
            with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    if rank == 0:
        (out / "run.json").write_text(json.dumps({"args": vars(args), "model_config": cfg, "preprocess_cfg": pp,
                                                  "train_pairs": len(ds), "world_size": world,
                                                  "precision": precision, "device": device_type,
                                                  "total_steps": total_steps}, indent=2, default=str) + "\n")
    summary = {}
    t_start = time.time()
    end_epoch = min(args.epochs, start_epoch + args.stop_after) if args.stop_after else args.epochs
    for epoch in range(start_epoch, end_epoch):
        if sampler is not None:
            sampler.set_epoch(epoch)
        ddp_model.train()
        losses = []
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0 or args.quiet,
                   dynamic_ncols=True, file=sys.stderr)
        opt.zero_grad(set_to_none=True)
        micro = 0
        for images, texts in loader:
            if micro // args.accum_steps >= steps_per_epoch:
                break  # leftover micro-batches that cannot fill an accumulation group
            images, texts = images.to(device, non_blocking=True), texts.to(device, non_blocking=True)
            last_micro = (micro + 1) % args.accum_steps == 0
            sync = ddp_model.no_sync() if (world > 1 and not last_micro) else _null()
            with sync:
                with torch.autocast(device_type, dtype=amp_dtype, enabled=use_amp):
                    img, txt, scale = ddp_model(images, texts)[:3]
                    loss = loss_fn(img.float(), txt.float(), scale)
                scaler.scale(loss / args.accum_steps).backward()
            losses.append(float(loss.detach()))
            micro += 1
            if not last_micro:
                continue
            if args.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            with torch.no_grad():  # CLIP clamps the learned temperature at 100
                model.logit_scale.clamp_(0, math.log(100))
            step_loss = float(np.mean(losses[-args.accum_steps:]))
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            bar.update(1)
            log({"type": "step", "epoch": epoch + 1, "step": step, "loss": round(step_loss, 6),
                 "lr": sched.get_last_lr()[0], "logit_scale": round(float(model.logit_scale.detach().exp()), 4)})
        bar.close()
        summary = {"type": "epoch", "epoch": epoch + 1, "step": step, "train_loss": round(float(np.mean(losses)), 6),
                   "seconds": round(time.time() - t_start, 1)}
        if val_loader is not None and rank == 0:
            summary["val_loss"] = round(contrastive_val_loss(model, val_loader, open_clip.ClipLoss(), device), 6)
        if args.eval_folder and rank == 0 and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            from training.evaluate import TorchModel, zeroshot

            res = zeroshot(TorchModel(model, pp, args.config, device), args.eval_folder, args.eval_split,
                           split="test")
            model.train()
            summary["heldout_top1"] = round(res["top1"], 4)
        log(summary)
        if rank == 0:
            msg = " ".join(f"{k}={v}" for k, v in summary.items() if k != "type")
            print(msg, file=sys.stderr, flush=True)
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": step, "arch": args.config,
                          "model_config": cfg, "rng": {"torch": torch.get_rng_state(), "loader": gen.get_state(),
                                                 "python": random.getstate()}},
                         ckpt_path)
            _atomic_save(model.state_dict(), out / "model.pt")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return summary


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.pretrain",
                                 description="Contrastive (CLIP/InfoNCE) pretraining or fine-tuning of an open_clip "
                                             "model on a caption table.")
    ap.add_argument("--config", required=True,
                    help="open_clip architecture or a training/configs/*.json name: small-vit, ViT-B-32, RN50, ...")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="start from this OpenCLIP-format checkpoint (e.g. RemoteCLIP-ViT-B-32.pt)")
    src.add_argument("--pretrained", help="start from an open_clip pretrained tag (needs internet), e.g. openai")
    src.add_argument("--remoteclip", action="store_true",
                     help="start from RemoteCLIP-{config}.pt downloaded from Hugging Face (chendelong/RemoteCLIP; "
                          "RN50, ViT-B-32, ViT-L-14)")
    ap.add_argument("--activation", choices=("quick_gelu", "gelu"), default="quick_gelu",
                    help="MLP activation (quick_gelu: RemoteCLIP/OpenAI; the exporter's default too)")
    ap.add_argument("--train", required=True, help="caption table CSV (image,caption[,source][,split])")
    ap.add_argument("--val", help="caption table for the validation loss")
    ap.add_argument("--eval-folder", help="folder dataset (class subfolders) for held-out zero-shot accuracy per epoch")
    ap.add_argument("--eval-split", help="split file (JSON) for --eval-folder: its test images are evaluated")
    ap.add_argument("--eval-every", type=int, default=1, help="epochs between held-out evaluations")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64, help="per process, per micro-batch")
    ap.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimiser step")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=10, help="warm-up optimiser steps")
    ap.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    ap.add_argument("--crop-scale", type=float, nargs=2, default=(0.5, 1.0), help="RandomResizedCrop area range")
    ap.add_argument("--precision", choices=("auto", "amp", "fp32"), default="auto",
                    help="amp: mixed precision (fp16 + GradScaler on GPU, bf16 on CPU); auto: amp on GPU, fp32 on CPU")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="run folder (checkpoint_last.pt, model.pt, log.jsonl)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pt")
    ap.add_argument("--stop-after", type=int, default=0,
                    help="stop after this many epochs of this invocation (time-boxed jobs; continue with --resume)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.accum_steps < 1 or args.batch_size < 1 or args.epochs < 1:
        print("error: --epochs, --batch-size and --accum-steps must be at least 1", file=sys.stderr)
        return 2
    try:
        train(args)
    except RemoteClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
