"""Questions embedded without importing sentence-transformers: its forward pass exported once to ONNX.

`medloop search` embeds one question per process. Importing sentence-transformers (torch, transformers, peft,
bitsandbytes, scikit-learn...) takes seconds on a small machine; onnxruntime and tokenizers load in a fraction
of one. `medloop ingest` exports the configured embedder's transformer next to the index (once per
embedder) when its pipeline is one we can reproduce exactly: Transformer -> mean or CLS pooling ->
optional Normalize. Any other layout keeps using sentence-transformers. The vectors are the same (the
tests hold them to a cosine of 0.9999).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

MODES = {"mean", "cls"}


def encoder_dir(index_dir: Path, embedder: str) -> Path:
    return index_dir / "query-encoder" / hashlib.sha1(embedder.encode()).hexdigest()[:12]


def export(model, folder: Path, embedder: str) -> bool:
    """Write `model` (a SentenceTransformer) as ONNX + tokenizer + pooling settings; False if its pipeline
    is not Transformer -> Pooling(mean|cls) -> [Normalize]."""
    import torch
    from sentence_transformers import SentenceTransformer

    if not isinstance(model, SentenceTransformer):
        return False  # the multilingual USE runs in numpy already: nothing to export
    names = [type(m).__name__ for m in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return False
    pooling = model[1].get_config_dict().get("pooling_mode")
    if pooling not in MODES or not hasattr(model.tokenizer, "backend_tokenizer"):
        return False
    hf = model[0].auto_model.eval()
    inputs = list(model.tokenizer.model_input_names)
    sample = model.tokenizer(["a question"], return_tensors="pt")

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf

        def forward(self, *args):
            return self.hf(**dict(zip(inputs, args, strict=True))).last_hidden_state

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            axes = {n: {0: "batch", 1: "tokens"} for n in [*inputs, "hidden"]}
            torch.onnx.export(Forward(), tuple(sample[n] for n in inputs), str(tmp / "model.onnx"),
                              input_names=inputs, output_names=["hidden"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        model.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        settings = {"embedder": embedder, "pooling": pooling, "normalize": len(names) == 3, "inputs": inputs,
                    "max_seq_length": int(model.max_seq_length or 512)}
        (tmp / "encoder.json").write_text(json.dumps(settings, indent=2))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


class OnnxQueryEncoder:
    """The subset of SentenceTransformer that retrieval uses: `encode` (questions, and passages at ingest) and the
    embedding's dimension."""

    def __init__(self, folder: Path):
        import onnxruntime
        from tokenizers import Tokenizer

        self.settings = json.loads((folder / "encoder.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.settings["max_seq_length"])
        self.tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        # Its threads would otherwise spin after each question and starve FAISS and BM25 of the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.encode(["a"]).shape[1])

    def encode(self, texts: list[str], normalize_embeddings: bool = True, batch_size: int = 64, **_) -> np.ndarray:
        texts = list(texts)
        if len(texts) > batch_size:  # padded to the longest text of each batch, not of them all
            return np.concatenate([self.encode(texts[i:i + batch_size], normalize_embeddings, batch_size)
                                   for i in range(0, len(texts), batch_size)])
        batch = self.tokenizer.encode_batch(texts)
        feeds = {"input_ids": [e.ids for e in batch], "attention_mask": [e.attention_mask for e in batch],
                 "token_type_ids": [e.type_ids for e in batch]}
        hidden = self.session.run(None, {n: np.array(feeds[n], dtype=np.int64) for n in self.settings["inputs"]})[0]
        mask = np.array(feeds["attention_mask"], dtype=np.float32)[..., None]
        if self.settings["pooling"] == "cls":
            vectors = hidden[:, 0]
        else:
            vectors = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        if normalize_embeddings or self.settings["normalize"]:
            vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return vectors.astype(np.float32)


def load(index_dir: Path, embedder: str) -> OnnxQueryEncoder | None:
    folder = encoder_dir(index_dir, embedder)
    if not (folder / "encoder.json").exists():
        return None
    if json.loads((folder / "encoder.json").read_text()).get("embedder") != embedder:
        return None
    return OnnxQueryEncoder(folder)
