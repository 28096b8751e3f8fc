"""What a user of a saved model directory sees through transformers' Auto classes alone: token ids, the
tokenizer's settings, the model's RoPE frequencies, logits and a bare ``generate``.

tests/test_hf_compat.py runs it in process (the newest transformers) and, as a script, under another
transformers version (``python hf_compat_probe.py DIR`` prints the JSON); it imports neither rlready nor
anything but torch and transformers, as a user's code would not.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TEXTS = [
    "Q: Where does Zorvan Keld live?\nA: Pellmoor, 1953",
    "12 + 345 = 357 <|endoftext|> naïve ünïcode ✓",
    "a",
]
PROMPTS = ["Q: Tom has 3 apples. He buys 2 more. How many apples does Tom have now?\nA:", "The", "12 +"]
# Long enough to reach positions where RoPE bases 1e4 and 1e6 give clearly different logits.
LONG = " ".join(f"w{i} {i * 7 % 100}" for i in range(200))


def probe(model_dir: str, *, with_model: bool = True) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    out: dict[str, Any] = {
        "transformers": transformers.__version__,
        "ids": [tok(t)["input_ids"] for t in TEXTS],
        "keys": sorted(enc.keys()),
        "batch_ids": enc["input_ids"].tolist(),
        "batch_mask": enc["attention_mask"].tolist(),
        "decoded": [tok.decode(tok(t)["input_ids"]) for t in TEXTS],
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "model_max_length": tok.model_max_length,
        "padding_side": tok.padding_side,
    }
    if not with_model:
        return out
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    gen = model.generation_config
    out["generation"] = {k: getattr(gen, k) for k in ("max_new_tokens", "eos_token_id", "pad_token_id")}
    rotary = [m for n, m in model.named_modules() if type(m).__name__.endswith("RotaryEmbedding")]
    out["inv_freq"] = rotary[0].inv_freq.tolist()
    long_ids = tok(LONG)["input_ids"][: tok.model_max_length]
    out["long_len"] = len(long_ids)
    with torch.no_grad():
        out["logits"] = model(torch.tensor([long_ids])).logits[0].tolist()
        # A bare call, as a user writes it: the lengths and special ids come from the directory.
        generated = model.generate(**enc)
    out["generated"] = generated[:, enc["input_ids"].shape[1] :].tolist()
    return out


if __name__ == "__main__":
    json.dump(probe(sys.argv[1], with_model=sys.argv[2:] != ["--tokenizer-only"]), sys.stdout)
