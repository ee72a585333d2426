"""Language probing: a linear map from frozen point features into a text encoder's embedding space.

    python -m concerto.eval.language --data <store | Pointcept folder> --checkpoint <ckpt | random>
        [--text-model openai/clip-vit-base-patch16 | google/siglip-base-patch16-224]
        [--prompt "a {} in a room"] [--query "a chair"] [--output DIR] [--results results.jsonl]

Steps (Concerto appendix, language probing): per-point features of the frozen
encoder (``concerto.inference``, as the linear probe); the class names, put in
``--prompt``, are embedded by the text tower (Hugging Face ``CLIPTextModelWithProjection``
or ``SiglipTextModel``, L2-normalised); a linear map W (features standardised
with the training statistics) is trained so that the cosine similarities of
``W f`` with the class-name embeddings, divided by ``--temperature``, classify
the training scenes' labelled points (cross-entropy). Segmentation of the
held-out scenes is then the class whose text embedding is nearest to ``W f``
(mIoU / mAcc / allAcc), and any free-text ``--query`` gives a per-point
similarity, written as a PNG heat map over the cloud (top | perspective).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from concerto.eval.linear_probe import extract_features
from concerto.eval.metrics import confusion_matrix, metrics_from_confusion
from concerto.eval.scenes import IGNORE_INDEX, ProbeError, class_names_for, load_scenes, split_scenes


class TextTower:
    """A CLIP or SigLIP text encoder with its tokenizer: ``embed(texts)`` -> float32 [T, D], unit rows."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_pretrained(cls, model_id: str) -> "TextTower":
        """Text tower and tokenizer of a Hub model id (or local folder); CLIP or SigLIP by the config's model_type."""
        from transformers import AutoConfig, AutoTokenizer

        try:
            kind = AutoConfig.from_pretrained(model_id).model_type
            tokenizer = AutoTokenizer.from_pretrained(model_id)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, ...
            raise ProbeError(f"text model '{model_id}': cannot be loaded ({type(exc).__name__}: {exc})") from exc
        model_cls = _text_class(kind, model_id)
        return cls(model_cls.from_pretrained(model_id), tokenizer, model_id)

    @classmethod
    def from_config(cls, kind: str, text_config: dict, tokenizer, seed: int = 0) -> "TextTower":
        """A randomly initialised tower (``kind`` "clip" | "siglip", kwargs of its text config); tests, offline runs."""
        from transformers import CLIPTextConfig, SiglipTextConfig

        configs = {"clip": CLIPTextConfig, "siglip": SiglipTextConfig}
        if kind not in configs:
            raise ProbeError(f"text tower kind must be one of {sorted(configs)}, got {kind!r}")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _text_class(kind, kind)(configs[kind](**text_config))
        return cls(model, tokenizer, f"random-{kind}")

    @property
    def dim(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "projection_dim", None) or cfg.hidden_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        tok = self.tokenizer(list(texts), padding="max_length" if "siglip" in type(self.model).__name__.lower()
                             else True, truncation=True, return_tensors="pt")
        tok = {k: v for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        if "siglip" in type(self.model).__name__.lower():
            tok.pop("attention_mask", None)  # SigLIP was trained without a mask, on max-length padding
        out = self.model(**tok)
        emb = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return F.normalize(emb.float(), dim=-1).numpy()


def _text_class(kind: str, name: str):
    from transformers import CLIPTextModelWithProjection, SiglipTextModel

    if kind in ("clip", "clip_text_model"):
        return CLIPTextModelWithProjection
    if kind in ("siglip", "siglip_text_model"):
        return SiglipTextModel
    raise ProbeError(f"text model '{name}': model_type {kind!r} is not CLIP or SigLIP")


def word_tokenizer(words: Sequence[str], max_length: int = 16):
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (lower-cased; [EOS] appended, highest id).

    For randomly initialised towers (tests, offline): real model ids bring their own tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in sorted({w.lower() for text in words for w in text.replace(".", " ").split()}):
        vocab.setdefault(w, len(vocab))
    vocab["[EOS]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
                                   model_max_length=max_length)


@dataclass
class TextMap:
    """z = normalise(((feat - mean) / std) @ weight.T + bias): point features [N, C] -> text space [N, D]."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def project(self, feat: np.ndarray) -> np.ndarray:
        z = ((feat - self.mean) / self.std) @ self.weight.T + self.bias
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def similarity(self, feat: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Cosine similarity [N, T] of mapped features with unit text embeddings [T, D]."""
        return self.project(feat) @ text.T


def fit_text_map(feat: np.ndarray, label: np.ndarray, text: np.ndarray, epochs: int = 30, lr: float = 0.01,
                 temperature: float = 0.07, batch_points: int = 16_384, seed: int = 0) -> TextMap:
    """Train W so that softmax(cos(W f, text_c) / temperature) predicts ``label`` (AdamW, cosine lr); seeded."""
    keep = label != IGNORE_INDEX
    x = torch.from_numpy(np.ascontiguousarray(feat[keep], np.float32))
    y = torch.from_numpy(label[keep].astype(np.int64))
    if len(y) == 0:
        raise ProbeError("language probe: the training scenes have no labelled points")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    t = torch.from_numpy(text)
    gen = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], t.shape[1])
    with torch.no_grad():
        lin.weight.normal_(0.0, x.shape[1] ** -0.5, generator=gen)
        lin.bias.zero_()
    opt = torch.optim.AdamW(lin.parameters(), lr=lr, weight_decay=1e-4)
    spe = max(1, -(-len(y) // batch_points))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * spe))
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), batch_points):
                idx = perm[s:s + batch_points]
                logits = F.normalize(lin(x[idx]), dim=-1) @ t.T / temperature
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return TextMap(mean.numpy(), std.numpy(), lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy())


def save_query_heatmap(path, coord: np.ndarray, similarity: np.ndarray, color: Optional[np.ndarray] = None) -> Path:
    """PNG: the cloud's colours (when given) beside the similarity heat map, top | perspective views."""
    from concerto.eval.pictures import colormap, default_cut, render, save_png, side_by_side

    cut = default_cut(coord)
    rgb = colormap(similarity, vmin=float(np.percentile(similarity, 2)), vmax=float(similarity.max()))
    views = [render(coord, rgb, v, (480, 360), 1, cut) for v in ("top", "perspective")]
    if color is not None:
        views = [render(coord, np.asarray(color, np.float32) / 255.0, "top", (480, 360), 1, cut)] + views
    return save_png(path, side_by_side(views))


def run_language(data: str, checkpoint: str, text: TextTower, output: str, config: str = "tiny",
                 prompt: str = "a {} in a room", queries: Sequence[str] = (), epochs: int = 30, lr: float = 0.01,
                 temperature: float = 0.07, val_fraction: float = 0.25, seed: int = 0,
                 max_train_points: int = 50_000, results: Optional[str] = None, encoder=None,
                 progress: bool = False, dataset_name: Optional[str] = None) -> dict:
    """The whole language probe (module doc); returns the result dict, also in ``<output>/result.json``."""
    from concerto.eval.trainer import write_json
    from concerto.inference import load, random_encoder

    out = Path(output)
    scenes, names, _ = load_scenes(data)
    class_names = class_names_for(scenes, names)
    train_keys, val_keys = split_scenes([s.key for s in scenes], val_fraction, seed)
    if encoder is None:
        encoder = random_encoder(config, seed=seed) if checkpoint == "random" else load(checkpoint)
    feats = extract_features(encoder, scenes, progress=progress)
    by_key = {s.key: s for s in scenes}
    prompts = [prompt.format(n) for n in class_names]
    text_emb = text.embed(prompts)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in train_keys:
        rows = np.nonzero(by_key[k].label != IGNORE_INDEX)[0]
        if len(rows) > max_train_points:
            rows = np.sort(rng.choice(rows, max_train_points, replace=False))
        xs.append(feats[k][rows])
        ys.append(by_key[k].label[rows])
    tmap = fit_text_map(np.concatenate(xs), np.concatenate(ys), text_emb, epochs, lr, temperature, seed=seed)
    k = len(class_names)
    conf = np.zeros((k, k), np.int64)
    for key in val_keys:
        conf += confusion_matrix(by_key[key].label, tmap.similarity(feats[key], text_emb).argmax(1), k)
    val = metrics_from_confusion(conf).to_dict(class_names)
    pictures = {}
    shown = by_key[val_keys[0]]
    for q in queries:
        sim = tmap.similarity(feats[shown.key], text.embed([q]))[:, 0]
        safe = "".join(c if c.isalnum() else "_" for c in q).strip("_")[:40] or "query"
        pictures[q] = str(save_query_heatmap(out / f"query_{safe}.png", shown.coord, sim, shown.color))
    result = {"dataset": dataset_name or str(data), "split": f"held-out {val_fraction:g} (seed {seed})",
              "mode": "language", "protocol": f"zero-shot, {text.name}", "checkpoint": str(checkpoint), "seed": seed,
              "text_model": text.name, "prompt": prompt, "class_names": class_names, "temperature": temperature,
              "split_keys": {"train": train_keys, "val": val_keys}, "val": val, "pictures": pictures,
              "picture_scene": shown.key, "mIoU": val["mIoU"], "mAcc": val["mAcc"], "allAcc": val["allAcc"]}
    write_json(out / "result.json", result)
    np.savez(out / "text_map.npz", mean=tmap.mean, std=tmap.std, weight=tmap.weight, bias=tmap.bias,
             text=text_emb, class_names=np.array(class_names))
    if results is not None:
        from concerto.eval.report import append_result

        append_result(results, {k: result[k] for k in ("dataset", "split", "mode", "protocol", "checkpoint", "seed",
                                                       "mIoU", "mAcc", "allAcc")} | {"output": str(out)})
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m concerto.eval.language", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoint", required=True, help="run folder, state.pt, official .pth, released name, or 'random'")
    p.add_argument("--config", default="tiny", help="encoder preset for --checkpoint random")
    p.add_argument("--text-model", default="openai/clip-vit-base-patch16",
                   help="Hub id or folder of a CLIP / SigLIP model (e.g. google/siglip-base-patch16-224)")
    p.add_argument("--prompt", default="a {} in a room", help="template, {} = class name")
    p.add_argument("--query", action="append", default=[], help="free text for a heat-map PNG (repeatable)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/language")
    p.add_argument("--results", default=None, help="JSON-lines results file to append a row to")
    p.add_argument("--dataset-name", default=None)
    a = p.parse_args(argv)
    from concerto.data import DataError
    from concerto.inference import InferenceError

    try:
        tower = TextTower.from_pretrained(a.text_model)
        result = run_language(a.data, a.checkpoint, tower, a.output, config=a.config, prompt=a.prompt,
                              queries=a.query, epochs=a.epochs, lr=a.lr, temperature=a.temperature,
                              val_fraction=a.val_fraction, seed=a.seed, results=a.results, progress=True,
                              dataset_name=a.dataset_name)
    except (DataError, InferenceError, ProbeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    v = result["val"]
    print(f"language probe ({result['text_model']}): held-out mIoU {100 * (v['mIoU'] or 0):.2f}  "
          f"mAcc {100 * (v['mAcc'] or 0):.2f}  allAcc {100 * (v['allAcc'] or 0):.2f}")
    for q, path in result["pictures"].items():
        print(f"query {q!r}: {path}")
    print(f"wrote {Path(a.output) / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
