# ruff: noqa: E501  (the chat templates are kept line for line as published)
"""Local stand-ins for the registered model families: real special tokens, real chat templates.

For each family (``llama2``, ``llama3`` (3.1), ``qwen2.5``, ``mistral`` (v0.3)) this builds,
with the ``tokenizers`` library and nothing downloaded:

- a tokenizer with the family's special tokens at their published ids, its pre-tokenizer /
  normalizer / decoder kind (SentencePiece-style Metaspace + byte fallback for llama2 and
  mistral, ByteLevel with the family's split regex for llama3 and qwen2.5), its
  post-processor (BOS where the family adds one) and the chat template its instruct model
  ships, saved as a HF directory (tokenizer.json, tokenizer_config.json,
  special_tokens_map.json). The vocabulary has the real size: a small BPE learned here,
  padded with unreachable filler tokens;
- a random-weight float32 safetensors model of the family's architecture with its features
  (llama3: GQA + llama3 rope scaling; qwen2.5: qkv bias + tied embeddings + GQA; llama2:
  plain multi-head; mistral: GQA, sliding window null), small enough for vLLM's CPU build.

The tokenizer directories describe the *base* checkpoints the graph fine-tunes: their
``eos_token`` is the end-of-text token (``</s>``, ``<|end_of_text|>``, ``<|endoftext|>``) and
the chat template ends assistant turns with the instruct model's end-of-turn token.

Importable (``from families import build_tokenizer, build_model, FAMILIES``) and runnable::

    python tests/families.py --family llama3 --out DIR [--layers 2] [--seed 0] [--tokenizer-only]

Over 400 lines because it holds four families' published chat templates, special-token
tables and vocabulary builders, each kept whole so it can be compared with its source.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- chat templates
# As the published instruct models ship them in tokenizer_config.json.

# meta-llama/Llama-2-*-chat-hf: <s>[INST] before every user turn, the system prompt inside the
# first one, " answer </s>" after each.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

# meta-llama/Llama-3.1-8B-Instruct (the base repo ships the same template).
LLAMA31_CHAT_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen/Qwen2.5-*-Instruct (the base repos ship the same template): ChatML with a default
# system prompt when the conversation has none.
QWEN25_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# mistralai/Mistral-7B-Instruct-v0.3: "[INST] q[/INST] answer</s>"; an optional system message
# is folded into the LAST user turn only (so a finished conversation renders without it).
MISTRAL_V03_CHAT_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# ----------------------------------------------------------------------------- families

# The split regexes of the byte-level families' pre-tokenizers.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _llama3_specials() -> list[str]:
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        4: "<|finetune_right_pad_id|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        8: "<|eom_id|>",
        9: "<|eot_id|>",
        10: "<|python_tag|>",
    }
    out, reserved = [], 0
    for i in range(256):
        if i in named:
            out.append(named[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


_QWEN_ADDED = [  # (token, special) from id 151643 on
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]

_MISTRAL_V3_CONTROL = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
] + [f"[control_{i}]" for i in range(8, 769)]  # ids 10..770


@dataclass(frozen=True)
class Family:
    """What a family's tokenizer and model are (ids are the published ones)."""

    name: str
    style: str  # "sentencepiece" (Metaspace + byte fallback) or "bytelevel"
    tokenizer_class: str  # as the published tokenizer_config.json names it
    architecture: str  # HF class
    model_type: str
    vocab_size: int  # the model's (embedding rows)
    regular_size: int  # ids below this are the BPE model's vocabulary
    added: tuple[tuple[str, bool], ...]  # added tokens from regular_size on: (content, special)
    bos: str | None
    eos: str  # the tokenizer's eos_token (base checkpoint): the end of a document
    pad: str | None
    unk: str | None
    end_of_turn: str  # what the chat template writes after an assistant reply
    chat_template: str
    config: dict[str, Any] = field(default_factory=dict)  # model config extras
    generation: dict[str, Any] = field(default_factory=dict)  # generation_config.json
    system_role: bool = True  # the template keeps a system message in a finished conversation
    default_system: str | None = None  # what the template adds when there is none
    model_max_length: int = 2048

    def token_id(self, token: str) -> int:
        for i, (content, _) in enumerate(self.added):
            if content == token:
                return (0 if self.style == "sentencepiece" else self.regular_size) + i
        raise KeyError(token)

    @property
    def bos_id(self) -> int | None:
        return None if self.bos is None else self.token_id(self.bos)

    @property
    def eos_id(self) -> int:
        return self.token_id(self.eos)

    @property
    def end_of_turn_id(self) -> int:
        return self.token_id(self.end_of_turn)

    @property
    def tokenizer_size(self) -> int:
        return self.regular_size + (0 if self.style == "sentencepiece" else len(self.added))


_SPM_BASIC = (("<unk>", True), ("<s>", True), ("</s>", True))

FAMILIES: dict[str, Family] = {
    "llama2": Family(
        name="llama2",
        style="sentencepiece",
        tokenizer_class="LlamaTokenizer",
        architecture="LlamaForCausalLM",
        model_type="llama",
        vocab_size=32000,
        regular_size=32000,
        added=_SPM_BASIC,
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        end_of_turn="</s>",
        chat_template=LLAMA2_CHAT_TEMPLATE,
        config=dict(
            num_key_value_heads=4,  # Llama 2 7B/13B: plain multi-head attention
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
        ),
        generation=dict(bos_token_id=1, eos_token_id=2, pad_token_id=0),
    ),
    "llama3": Family(
        name="llama3",
        style="bytelevel",
        tokenizer_class="PreTrainedTokenizerFast",
        architecture="LlamaForCausalLM",
        model_type="llama",
        vocab_size=128256,
        regular_size=128000,
        added=tuple((t, True) for t in _llama3_specials()),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        pad=None,
        unk=None,
        end_of_turn="<|eot_id|>",
        chat_template=LLAMA31_CHAT_TEMPLATE,
        config=dict(
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            rms_norm_eps=1e-5,
            bos_token_id=128000,
            eos_token_id=128001,
            pad_token_id=None,
        ),
        generation=dict(bos_token_id=128000, eos_token_id=[128001, 128009]),
    ),
    "qwen2.5": Family(
        name="qwen2.5",
        style="bytelevel",
        tokenizer_class="Qwen2Tokenizer",
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        vocab_size=151936,
        regular_size=151643,
        added=tuple(_QWEN_ADDED),
        bos=None,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        unk=None,
        end_of_turn="<|im_end|>",
        chat_template=QWEN25_CHAT_TEMPLATE,
        config=dict(
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            bos_token_id=151643,
            eos_token_id=151643,
            pad_token_id=151643,
        ),
        generation=dict(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643),
        default_system=QWEN_DEFAULT_SYSTEM,
    ),
    "mistral": Family(
        name="mistral",
        style="sentencepiece",
        tokenizer_class="LlamaTokenizer",
        architecture="MistralForCausalLM",
        model_type="mistral",
        vocab_size=32768,
        regular_size=32768,
        added=tuple((t, True) for t in _MISTRAL_V3_CONTROL),
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        end_of_turn="</s>",
        chat_template=MISTRAL_V03_CHAT_TEMPLATE,
        config=dict(
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-5,
            sliding_window=None,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
        ),
        generation=dict(bos_token_id=1, eos_token_id=2),
        system_role=False,
    ),
}

# ----------------------------------------------------------------------------- tokenizers

_EXTRA_TEXT = """\
Hello, world! How are you today? I'm fine, thanks; and you're welcome.
Convert the letters to capitals: a b c -> A B C. Count with me: 0 1 2 3 4 5 6 7 8 9 10 100 2024.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.
Questions, answers and instructions: summarize, translate, explain, write, list, sort.
Symbols: ( ) [ ] { } < > / \\ | _ - + = * & ^ % $ # @ ! ? . , ; : ' " ` ~
"""


def _corpus(n_docs: int = 300) -> list[str]:
    try:
        from llmbuild.data.synth import corpus_documents

        docs = list(corpus_documents(n_docs, 0))
    except ImportError:  # pragma: no cover - families.py without the package
        docs = []
    return docs + _EXTRA_TEXT.splitlines() * 5


def _learn(style: str, texts: Iterable[str], size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """A small BPE learned on ``texts``: (tokens in learned order, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=size, initial_alphabet=alphabet, show_progress=False, special_tokens=[]
    )
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return [t for t, _ in vocab], merges


def _bpe_vocab(fam: Family, learned: list[str]) -> dict[str, int]:
    """The family's full BPE vocabulary: its fixed ids, the learned tokens, then fillers."""
    vocab: dict[str, int] = {}
    if fam.style == "sentencepiece":
        for content, _ in fam.added:  # control tokens first: <unk> <s> </s> [INST] ...
            vocab[content] = len(vocab)
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in learned:
        if t not in vocab:
            vocab[t] = len(vocab)
    n = 0
    while len(vocab) < fam.regular_size:
        # Unreachable: the split regexes never make "<" and letters one pre-token, and no
        # merge produces these.
        vocab.setdefault(f"<filler_{n}>", len(vocab))
        n += 1
    if len(vocab) != fam.regular_size:
        raise ValueError(f"{fam.name}: learned vocabulary larger than {fam.regular_size}")
    return vocab


def make_tokenizer(name: str, learned_size: int = 1200):
    """The family's ``tokenizers.Tokenizer`` (not saved)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    fam = family(name)
    learned, merges = _learn(fam.style, _corpus(), learned_size)
    vocab = _bpe_vocab(fam, learned)
    if fam.style == "sentencepiece":
        tok = Tokenizer(
            models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
        )
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    else:
        regex = LLAMA3_SPLIT if fam.name == "llama3" else QWEN2_SPLIT
        tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=fam.name == "llama3"))
        tok.normalizer = normalizers.NFC() if fam.name == "qwen2.5" else None
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
    # Added tokens at their published ids (the BPE vocabulary already holds the
    # SentencePiece families' control tokens; adding them marks them special).
    tok.add_special_tokens(
        [
            AddedToken(c, special=True, normalized=False, lstrip=False, rstrip=False)
            for c, special in fam.added
            if special
        ]
    )
    plain = [
        AddedToken(c, special=False, normalized=False) for c, special in fam.added if not special
    ]
    if plain:
        tok.add_tokens(plain)
    for content, _ in fam.added:
        got = tok.token_to_id(content)
        if got != fam.token_id(content):
            raise ValueError(f"{fam.name}: {content} at {got}, expected {fam.token_id(content)}")
    byte_level = processors.ByteLevel(trim_offsets=False)
    if fam.bos is not None:
        bos = processors.TemplateProcessing(
            single=f"{fam.bos}:0 $A:0",
            pair=f"{fam.bos}:0 $A:0 {fam.bos}:1 $B:1",
            special_tokens=[(fam.bos, fam.bos_id)],
        )
        tok.post_processor = (
            processors.Sequence([byte_level, bos]) if fam.style == "bytelevel" else bos
        )
    else:
        tok.post_processor = byte_level
    return tok


def _added_tokens_decoder(tok) -> dict[str, dict[str, Any]]:
    out = {}
    for i, t in sorted(tok.get_added_tokens_decoder().items()):
        out[str(i)] = {
            "content": t.content,
            "lstrip": t.lstrip,
            "normalized": t.normalized,
            "rstrip": t.rstrip,
            "single_word": t.single_word,
            "special": t.special,
        }
    return out


def build_tokenizer(name: str, out: str | Path) -> Path:
    """tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json."""
    fam = family(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(name)
    tok.save(str(out / "tokenizer.json"))
    cfg: dict[str, Any] = {
        "added_tokens_decoder": _added_tokens_decoder(tok),
        "bos_token": fam.bos,
        "eos_token": fam.eos,
        "pad_token": fam.pad,
        "unk_token": fam.unk,
        "chat_template": fam.chat_template,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": fam.model_max_length,
        "tokenizer_class": fam.tokenizer_class,
    }
    smap: dict[str, Any] = {}
    if fam.style == "sentencepiece":
        cfg.update(add_bos_token=True, add_eos_token=False, legacy=False, sp_model_kwargs={})
        if fam.name == "mistral":
            cfg.update(additional_special_tokens=[], spaces_between_special_tokens=False)
    if fam.name == "qwen2.5":
        extra = [c for c, special in fam.added[1:] if special]
        cfg.update(
            add_bos_token=False,
            add_prefix_space=False,
            additional_special_tokens=extra,
            errors="replace",
            split_special_tokens=False,
        )
        smap["additional_special_tokens"] = extra
    for key in ("bos", "eos", "pad", "unk"):
        value = getattr(fam, key)
        if value is not None:
            smap[f"{key}_token"] = {
                "content": value,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
            }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- models


def model_config(name: str, layers: int = 2) -> dict[str, Any]:
    """The kwargs of the family's HF config class (small sizes vLLM's CPU build serves)."""
    fam = family(name)
    cfg = dict(
        vocab_size=fam.vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=4,
        head_dim=32,
        max_position_embeddings=2048,
        hidden_act="silu",
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    cfg.update(fam.config)
    return cfg


def build_model(
    name: str, out: str | Path, layers: int = 2, seed: int = 0, tokenizer: bool = True
) -> Path:
    """A random-init float32 safetensors model of the family, with its tokenizer files."""
    import torch
    import transformers as tf

    fam = family(name)
    out = Path(out)
    cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM)}.get(fam.model_type)
    if fam.model_type == "qwen2":
        cls = (tf.Qwen2Config, tf.Qwen2ForCausalLM)
    elif fam.model_type == "mistral":
        cls = (tf.MistralConfig, tf.MistralForCausalLM)
    config = cls[0](**model_config(name, layers))
    torch.manual_seed(seed)
    model = cls[1](config).to(torch.float32).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor shows
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight") or pname.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in pname else 0.0))
    model.generation_config = tf.GenerationConfig(**fam.generation)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # always written, null or not
        cfg[key] = fam.config.get(key)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if tokenizer:
        build_tokenizer(name, out)
    return out


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", required=True, choices=sorted(FAMILIES))
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-only", action="store_true", help="no model weights")
    args = p.parse_args(argv)
    if args.tokenizer_only:
        build_tokenizer(args.family, args.out)
    else:
        build_model(args.family, args.out, layers=args.layers, seed=args.seed)
    print(f"wrote {args.family} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
