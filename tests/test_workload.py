"""The ShareGPT workload reader copes with the package's truncated JSON file."""

from __future__ import annotations

from benchmarks.sharegpt import iter_conversations, load_samples, to_batch_lines


def test_truncated_dataset_parses_every_whole_conversation():
    convs = list(iter_conversations())
    assert len(convs) == 17_671
    firsts = [c for c in convs if len(c["conversations"]) >= 2 and c["conversations"][0]["from"] == "human"
              and c["conversations"][1]["from"] == "gpt"]
    assert len(firsts) == 11_135


def test_sample_is_seeded_and_respects_max_input(tiny):
    a = load_samples(8, seed=3, tokenizer=tiny.tokenizer, max_input=300)
    assert a == load_samples(8, seed=3, tokenizer=tiny.tokenizer, max_input=300)
    assert a != load_samples(8, seed=4, tokenizer=tiny.tokenizer, max_input=300)
    assert all(len(tiny.tokenizer(s.prompt).input_ids) <= 300 for s in a)
    lines = to_batch_lines(a, max_tokens=16, ignore_eos=True)
    assert [x["body"]["max_tokens"] for x in lines] == [16] * 8
    assert len({x["custom_id"] for x in lines}) == 8
