"""Tokenizer and chat-template fixtures (called by make_fixtures.py; needs only `tokenizers`,
`transformers` 5.x and `gguf`, no hub).

No real tokenizer can be downloaded here, so each family's tokenizer is rebuilt in miniature:
a BPE of a few hundred merges trained on TEXT below, with the family's real normalizer,
pre-tokenizer, post-processor and special tokens. Under `<out>/tokenizers/` it writes:

  <tok>/tokenizer.json           the tiny tokenizer (llama3, qwen2, smollm, gpt2: byte-level BPE;
                                 sp: a Llama-2-style SentencePiece BPE with byte fallback)
  <tok>/tokenizer_config.json    the family's special tokens, add_bos_token, tokenizer_class and
                                 chat template
  <tok>/tokenizer.gguf           (byte-level ones) the same vocabulary, merges, token types,
                                 special ids and template as GGUF metadata, as llama.cpp's
                                 converter writes them (tokenizer.ggml.model gpt2, .pre per family)
  <tok>/expected.json            transformers' ids for STRINGS, without and with special tokens,
                                 from the folder and (gguf_ids) from the GGUF
  templates/<name>/tokenizer_config.json, expected.json
                                 one per chat template (llama3.2, qwen2.5, qwen3, mistral, phi3,
                                 chatml = SmolLM2's), over one of the tokenizers above (`tokenizer`
                                 in expected.json): apply_chat_template's text and ids
                                 (tokenize=True) for a 3-turn conversation with a system message,
                                 with and without add_generation_prompt, and with the last answer.

Ids come from transformers' AutoTokenizer, the code path users of these models run.
"""

import json
import os
import shutil
import tempfile

import gguf
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

# The text the tiny vocabularies are trained on: English with contractions, code, numbers, accents,
# other scripts, emoji and whitespace runs, so the merges touch what the test strings hold.
TEXT = """The quick brown fox jumps over the lazy dog. It's what they'd said: we'll see, you're right, I've been there.
DON'T SHOUT! She'S here, they'RE not. I'm sure he'll come; we'd better go.
def add(a, b):
    return a + b  # 12345 + 67890 = 80235


class Point:
    def __init__(self, x=0.5, y=-3.25):
        self.x, self.y = x, y
for i in range(1000): print(i ** 2, end=", ")
if (x >= 10 && y != 0) { printf("%d\\n", x / y); }
Prices: $3.99, €12,50, ¥1000; dates 2024-07-26 and 1999/12/31; pi is 3.14159265358979.
Café naïve résumé coöperate Ærøskøbing Straße façade jalapeño piñata.
日本語のテキスト、中文文本，한국어 텍스트. Ελληνικά και русский язык.
Emoji: 🦀🔥👍🏽 🎉🎉 ❤️ done.
Tabs\tand\tspaces    and    runs of spaces.


Multiple blank lines above and trailing spaces here.   
user assistant system the a an of to in is you that it he was for on are as with
Hello world! How are you today? I am fine, thanks. What is the capital of France? Paris.
"""

# Strings whose ids are compared: what tokenizers get wrong first.
STRINGS = [
    "Hello world",
    "  leading spaces and trailing  ",
    "naïve café, résumé; Ærøskøbing",
    "emoji 🦀🔥👍🏽 and ❤️",
    "def f(x):\n    return x**2  # square\n",
    "line one\n\n\nline two\r\nwindows\ttab",
    "12345 3.14159 2024-07-26 1000000",
    "I'm sure it's what they'd've done; DON'T, She'S, we'LL",
    "日本語 中文 한국어 русский",
    "a\n \n  \n   b",
    "x    y\t\tz     ",
    "HELLO'S WORLD'LL we'Re i'D",
    "x=(a+b)*[c-d]/{e};\n\n\tfoo_bar $var @home #tag",
    "$10,000.00 vs 9999999 and 42nd 3rd",
    "!!!\n\n\n???   \n.\r\n",
    "über-straße... naïve—ok «quote»",
    # Special and added tokens inside text: each tokenizer matches its own whole and spells the
    # others out.
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>ok<|endoftext|>",
    "<s>[INST] hi [/INST] ok</s><|user|>\nx<|end|>\n<|assistant|>",
    "",
]

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MERGES = 300

# ------------------------------------------------------------------------------------------------
# Chat templates, as the models' tokenizer_config.json files have them.
# ------------------------------------------------------------------------------------------------

LLAMA32_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
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

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
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
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
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

QWEN25_TEMPLATE = """{%- if tools %}
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

QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

MISTRAL_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# SmolLM2-Instruct's: ChatML with a default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You are terse. Answer in one line."},
    {"role": "user", "content": "What's 12345 + 67890?"},
    {"role": "assistant", "content": "80235 — easy 🦀"},
    {"role": "user", "content": "Write def add(a, b) in Python.\n  Indent with 4 spaces."},
    {"role": "assistant", "content": "def add(a, b):\n    return a + b"},
    {"role": "user", "content": "Merci, café naïve!  "},
]
ANSWER = {"role": "assistant", "content": "De rien. It's done."}


# ------------------------------------------------------------------------------------------------
# Tiny tokenizers
# ------------------------------------------------------------------------------------------------

def train_bpe(pre_tokenizer, normalizer, specials, alphabet):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + MERGES, initial_alphabet=alphabet,
                                  special_tokens=[], show_progress=False, min_frequency=2)
    tok.train_from_iterator(TEXT.splitlines(keepends=True), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    return [t for t, _ in vocab], merges


def added(i, content, special=True):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def byte_level(name, split, normalizer, specials, bos=None, extra_added=()):
    """A byte-level BPE like Llama 3's / Qwen2's: family split regex (or GPT-2's), specials after
    the vocabulary."""
    if split is None:
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    elif split == "digits":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    else:
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tokens, merges = train_bpe(pre, normalizer, specials, pre_tokenizers.ByteLevel.alphabet())
    n = len(tokens)
    all_added = [added(n + i, s) for i, s in enumerate(specials)]
    all_added += [added(n + len(specials) + i, s, special=False) for i, s in enumerate(extra_added)]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges]))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    j = json.loads(tok.to_str())
    j["added_tokens"] = all_added
    if bos is not None:
        bos_id = n + specials.index(bos)
        j["post_processor"] = {
            "type": "Sequence", "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}]}
    else:
        j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return j, tokens, merges


def sentencepiece_like():
    """A Llama-2-style BPE (Mistral, Phi-3): Metaspace `▁` prepended to the first piece, byte
    fallback through `<0x..>` tokens, `<unk> <s> </s>` first, as transformers' LlamaTokenizer
    builds it."""
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    chars = sorted(set(TEXT.replace(" ", "▁").replace("\n", "")) - {"\t", "\r"})
    tokens, merges = train_bpe(pre, None, [], chars + ["▁"])
    head = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens = head + [t for t in tokens if t not in head]
    specials_phi3 = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges],
                               unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    j = json.loads(tok.to_str())
    n = len(tokens)
    j["added_tokens"] = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")] + [
        added(n + i, s) for i, s in enumerate(specials_phi3)]
    j["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    return j


# name: (split, normalizer, specials, bos, non-special added tokens, tokenizer_config, gguf pre, template)
BYTE_LEVEL = {
    "llama3": (LLAMA3_SPLIT, None,
               ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                "<|eot_id|>"], "<|begin_of_text|>", (),
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast",
                "clean_up_tokenization_spaces": True, "model_max_length": 131072},
               "llama-bpe", "llama3.2"),
    "qwen2": (QWEN2_SPLIT, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
              ("<think>", "</think>"),
              {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
               "errors": "replace", "split_special_tokens": False, "add_prefix_space": False, "model_max_length": 131072},
              "qwen2", "qwen2.5"),
    "smollm": ("digits", None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, (),
               {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                "unk_token": "<|endoftext|>", "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                "model_max_length": 8192},
               "smollm", "chatml"),
    "gpt2": (None, None, ["<|endoftext|>"], None, (),
             {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "model_max_length": 1024},
             "gpt-2", None),
}

SP_CONFIG = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer",
             "legacy": False, "add_bos_token": True, "add_eos_token": False, "model_max_length": 32768}

# template name: (source, tokenizer, tokenizer_config overrides, template kwargs)
TEMPLATES = {
    "llama3.2": (LLAMA32_TEMPLATE, "llama3", {}, {"date_string": "26 Jul 2024"}),
    "qwen2.5": (QWEN25_TEMPLATE, "qwen2", {}, {}),
    "qwen3": (QWEN3_TEMPLATE, "qwen2", {}, {}),
    "chatml": (CHATML_TEMPLATE, "smollm", {}, {}),
    "mistral": (MISTRAL_TEMPLATE, "sp", {}, {}),
    "phi3": (PHI3_TEMPLATE, "sp", {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "add_bos_token": False},
             {}),
}


def write_json(path, obj):
    """One key per line and one list item per line, each written compactly: small files whose
    diffs still show which string or vocabulary entry changed."""
    def compact(v):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))

    def value(v):
        if isinstance(v, list) and v:
            return "[\n  " + ",\n  ".join(compact(x) for x in v) + "\n ]"
        if isinstance(v, dict) and v:
            return "{\n  " + ",\n  ".join(f"{compact(k)}: {compact(x)}" for k, x in v.items()) + "\n }"
        return compact(v)

    lines = [f" {compact(k)}: {value(v)}" for k, v in obj.items()]
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def ids_of(tok, strings, special):
    return [tok(s, add_special_tokens=special)["input_ids"] for s in strings]


def pre_tokens_of(tok, strings):
    """The pieces transformers' pre-tokenizer cuts each string into (byte-level spelling): the
    regex check that ids alone may miss when a tiny vocabulary has no merge across a cut."""
    pre = tok.backend_tokenizer.pre_tokenizer
    return [[piece for piece, _ in pre.pre_tokenize_str(s)] for s in strings]


def write_gguf(path, tokens, merges, specials_start, n_specials, extra, pre, cfg, template, j):
    """The vocabulary as llama.cpp's converter writes a gpt2-model tokenizer."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny tokenizer")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    vocab = tokens + [a["content"] for a in j["added_tokens"]]
    w.add_token_list(vocab)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    types += [gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED for a in j["added_tokens"]]
    w.add_token_types(types)
    w.add_token_merges(merges)
    index = {t: i for i, t in enumerate(vocab)}
    if cfg.get("bos_token"):
        w.add_bos_token_id(index[cfg["bos_token"]])
    w.add_eos_token_id(index[cfg["eos_token"]])
    if cfg.get("pad_token"):
        w.add_pad_token_id(index[cfg["pad_token"]])
    w.add_add_bos_token(bool(j["post_processor"].get("type") == "Sequence"))
    if template:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build(out_root):
    root = os.path.join(out_root, "tokenizers")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    written = []
    for name, (split, norm, specials, bos, extra, cfg, pre, template) in BYTE_LEVEL.items():
        d = os.path.join(root, name)
        os.makedirs(d)
        j, tokens, merges = byte_level(name, split, norm, specials, bos, extra)
        write_json(os.path.join(d, "tokenizer.json"), j)
        config = dict(cfg)
        if template:
            config["chat_template"] = TEMPLATES[template][0]
        write_json(os.path.join(d, "tokenizer_config.json"), config)
        write_gguf(os.path.join(d, "tokenizer.gguf"), tokens, merges, len(tokens), len(specials), extra, pre, cfg,
                   TEMPLATES[template][0] if template else None, j)
        hf = AutoTokenizer.from_pretrained(d)
        expected = {"strings": STRINGS, "ids": ids_of(hf, STRINGS, False), "ids_special": ids_of(hf, STRINGS, True),
                    "pre_tokens": pre_tokens_of(hf, STRINGS), "pre": pre, "template": template}
        # transformers' own GGUF loader on the same metadata (a vocabulary-only file).
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(os.path.join(d, "tokenizer.gguf"), tmp)
            try:
                g = AutoTokenizer.from_pretrained(tmp, gguf_file="tokenizer.gguf")
                expected["gguf_ids"] = ids_of(g, STRINGS, False)
                expected["gguf_pre_tokens"] = pre_tokens_of(g, STRINGS)
            except Exception as e:  # recorded, so the Rust test can say what transformers did
                expected["gguf_error"] = f"{type(e).__name__}: {e}"
        write_json(os.path.join(d, "expected.json"), expected)
        written.append(d)

    d = os.path.join(root, "sp")
    os.makedirs(d)
    write_json(os.path.join(d, "tokenizer.json"), sentencepiece_like())
    write_json(os.path.join(d, "tokenizer_config.json"), SP_CONFIG)
    hf = AutoTokenizer.from_pretrained(d)
    write_json(os.path.join(d, "expected.json"), {"strings": STRINGS, "ids": ids_of(hf, STRINGS, False),
                                                  "ids_special": ids_of(hf, STRINGS, True), "template": None})
    written.append(d)

    for tname, (source, tokname, overrides, kwargs) in TEMPLATES.items():
        d = os.path.join(root, "templates", tname)
        os.makedirs(d)
        with open(os.path.join(root, tokname, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        config.update(overrides)
        config["chat_template"] = source
        write_json(os.path.join(d, "tokenizer_config.json"), config)
        # transformers reads the folder: the tokenizer's tokenizer.json with this config.
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(os.path.join(root, tokname, "tokenizer.json"), tmp)
            shutil.copy(os.path.join(d, "tokenizer_config.json"), tmp)
            hf = AutoTokenizer.from_pretrained(tmp)

            def apply(messages, gen, tokenize):
                out = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=tokenize, **kwargs)
                if tokenize and not isinstance(out, list):
                    out = out["input_ids"]
                return out

            full = CONVERSATION + [ANSWER]
            expected = {
                "tokenizer": tokname,
                "kwargs": kwargs,
                "messages": full,
                "prompt_text": apply(CONVERSATION, True, False),
                "prompt_ids": apply(CONVERSATION, True, True),
                "no_generation_text": apply(CONVERSATION, False, False),
                "no_generation_ids": apply(CONVERSATION, False, True),
                "full_text": apply(full, False, False),
                "full_ids": apply(full, False, True),
                "eos_id": hf.convert_tokens_to_ids(config["eos_token"]),
            }
        write_json(os.path.join(d, "expected.json"), expected)
        written.append(d)
    return written
