"""Tiny random-weight Llama models with a real chat-template tokenizer, made offline in a second."""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "This is an example for a response to the question:",
    "Now answer with a response of your own, including the thinking process:",
    "So the answer is C. wetland. A wetland is an area that is wet for most of the year.",
    "calculate_triangle_area(base=10, height=5) math.factorial(5)",
    "Source text: The quick brown fox jumps over the lazy dog. 0123456789",
    "You are a helpful assistant. system user assistant",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32, tie: bool = True, init_std: float = 0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        initializer_range=init_std,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(path: Path, seed: int = 0, **kwargs) -> Path:
    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed=seed, **kwargs)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def toy_records(n: int = 8) -> list[dict]:
    topics = ["France", "the fox", "a wetland", "the triangle", "the dog", "the year", "the area", "Paris"]
    return [
        {
            "id": f"r{i}",
            "prompt": f"What is {topics[i % len(topics)]}? ({i})",
            "demonstration": f"So the answer is C. {topics[(i + 1) % len(topics)]}.",
        }
        for i in range(n)
    ]
