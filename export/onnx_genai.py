"""`genai_config.json`: what onnxruntime-genai needs to run an edgetts ONNX folder as it is.

onnxruntime-genai names the graph's inputs and outputs through this file, so it runs optimum's
naming (`past_key_values.%d.key`, `present.%d.key`) without a rebuild. Our graph concatenates
past and new KV itself, so the past and present buffers cannot be shared.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgetts.export.onnx import ARCHS, MODEL_FILE


def genai_config(config: dict, generation: dict, input_names: list[str], context_length: int) -> dict:
    heads = config["num_attention_heads"]
    head_size = config.get("head_dim") or config["hidden_size"] // heads
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask",
              "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    if "position_ids" in input_names:
        inputs["position_ids"] = "position_ids"
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    return {
        "model": {
            "bos_token_id": generation.get("bos_token_id", config.get("bos_token_id")),
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": head_size,
                "hidden_size": config["hidden_size"],
                "inputs": inputs,
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": heads,
                "num_hidden_layers": config["num_hidden_layers"],
                "num_key_value_heads": config.get("num_key_value_heads", heads),
            },
            "eos_token_id": eos,
            "pad_token_id": config.get("pad_token_id") if config.get("pad_token_id") is not None else eos,
            "type": ARCHS[config["model_type"]],
            "vocab_size": config["vocab_size"],
        },
        "search": {
            "do_sample": False, "early_stopping": True, "length_penalty": 1.0, "max_length": context_length,
            "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1, "num_return_sequences": 1,
            "past_present_share_buffer": False, "repetition_penalty": 1.0, "temperature": 1.0,
            "top_k": 1, "top_p": 1.0,
        },
    }


def write_genai_config(folder: Path) -> Path:
    """Write folder/genai_config.json from the folder's config.json and its model's inputs."""
    import onnx

    config = _read(folder / "config.json")
    generation = _read(folder / "generation_config.json")
    graph = onnx.load(str(folder / MODEL_FILE), load_external_data=False).graph
    names = [i.name for i in graph.input]
    context = min(config.get("max_position_embeddings", 4096), 4096)  # onnxruntime-genai allocates up to this
    path = folder / "genai_config.json"
    path.write_text(json.dumps(genai_config(config, generation, names, context), indent=2))
    return path


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
