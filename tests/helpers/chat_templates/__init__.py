"""The real chat templates of five model families, and tiny tokenizers that carry each family's special tokens.

The <name>.jinja files next to this module are byte-exact copies of the `chat_template` the upstream Hugging Face
repos ship (PROVENANCE.md says which repo, where each copy came from and what it was checked against). Do not
reformat them: two have no trailing newline, and templates are compared by string equality in places (TRL does).

`family_tokenizer(name)` loads the tiny real tokenizer of ../shared/models/stories260k (512 pieces, so tests stay
fast) and dresses it as the family: the family's turn/control tokens are added as single tokens with upstream's
flags, bos/eos/pad are the ones upstream's tokenizer_config names, BOS is put in front of every encode exactly
where upstream's tokenizer does that, and `chat_template` is the file's text. Only the ordinary vocabulary is
stories260k's, so token ids differ from upstream's; the rendered text and the token boundaries of the special
tokens do not. The added tokens get ids from 512 up: a stories260k model that is to read them needs
`model.resize_token_embeddings(len(tok))` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken

HERE = Path(__file__).resolve().parent

FAMILIES = ("llama3", "gemma2", "mistral_v03", "phi3", "qwen25")


@dataclass(frozen=True)
class Family:
    upstream: str  # the Hugging Face repo the template and the token facts are from
    bos: str | None
    eos: str
    pad: str | None  # None where upstream's tokenizer has no pad token (Llama 3.1, Mistral v0.3)
    # Whether upstream's tokenizer puts BOS in front of every encode (add_special_tokens=True). The Llama, Gemma and
    # Mistral templates write BOS themselves as well, so tokenizing their rendered text that way gives two BOS;
    # apply_chat_template(tokenize=True) tokenizes with add_special_tokens=False and gives one.
    add_bos: bool
    special: tuple[str, ...]  # added with special=True: one id each, dropped by decode(skip_special_tokens=True)
    rstrip: tuple[str, ...] = ()  # special tokens upstream marks rstrip=True: they swallow the whitespace after them
    plain: tuple[str, ...] = ()  # added tokens upstream marks special=False: one id each, kept by skip_special_tokens
    listed: tuple[str, ...] = ()  # the ones upstream also lists in additional_special_tokens (so in all_special_ids)


SPECS: dict[str, Family] = {
    # <|eom_id|> and <|python_tag|> are written by the template for built-in tools (builtin_tools=[...]);
    # <|end_of_text|> is the base model's EOS, which the Instruct tokenizer_config replaces with <|eot_id|>.
    "llama3": Family(
        upstream="meta-llama/Llama-3.1-8B-Instruct",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=None,
        add_bos=True,
        special=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ),
    ),
    # tokenizer_config's eos is <eos>; the turn ends with <end_of_turn> (generation_config stops on both).
    "gemma2": Family(
        upstream="google/gemma-2-2b-it",
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        add_bos=True,
        special=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        listed=("<start_of_turn>", "<end_of_turn>"),
    ),
    # <s> and </s> are stories260k's own BOS/EOS already (a Llama-style sentencepiece vocabulary, like Mistral's).
    "mistral_v03": Family(
        upstream="mistralai/Mistral-7B-Instruct-v0.3",
        bos="<s>",
        eos="</s>",
        pad=None,
        add_bos=True,
        special=(
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
    ),
    # Upstream's role tokens are rstrip=True: the "\n" the template writes after <|user|>, <|end|>, ... is absorbed
    # into the token when encoding, so encode/decode does not give the rendered text back. That is upstream's behaviour.
    "phi3": Family(
        upstream="microsoft/Phi-3-mini-4k-instruct",
        bos="<s>",
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        add_bos=False,
        special=("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        rstrip=("<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
    ),
    # Qwen2.5 has no BOS at all (bos_token null). <tool_call>/</tool_call> are added but not special upstream;
    # <tool_response>/</tool_response> are not tokens in Qwen2.5 (they became tokens in Qwen3), so they stay text.
    "qwen25": Family(
        upstream="Qwen/Qwen2.5-7B-Instruct",
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        add_bos=False,
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        plain=("<tool_call>", "</tool_call>"),
        listed=("<|im_start|>", "<|im_end|>"),
    ),
}


def template_text(name: str) -> str:
    """The family's chat template, exactly as upstream ships it (bytes decoded, no newline translation)."""
    if name not in SPECS:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return (HERE / f"{name}.jinja").read_bytes().decode("utf-8")


def family_tokenizer(name: str):
    """A fresh stories260k tokenizer dressed as family `name` (one of FAMILIES); see the module docstring."""
    from transformers import AutoTokenizer

    from tests.conftest import MODEL_DIR  # imported here: conftest sets the test environment when imported

    spec = SPECS[name]
    text = template_text(name)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    # normalized=False: matched on the raw text, before stories260k's normalizer turns spaces into "▁".
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False, rstrip=t in spec.rstrip) for t in spec.special],
        special_tokens=True,
    )
    if spec.plain:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.plain])
    if spec.listed:  # extend, not replace, the extra special tokens list (stories260k's <s>, </s> stay in it)
        tok.add_special_tokens({"extra_special_tokens": list(spec.listed)}, replace_extra_special_tokens=False)
    # Plain attribute assignment: add_special_tokens({...}) would also replace the extra special tokens list.
    # None is accepted (transformers 5.24) and leaves bos_token_id / pad_token_id None, as upstream's are.
    tok.bos_token = spec.bos
    tok.eos_token = spec.eos
    tok.pad_token = spec.pad
    tok.add_bos_token = spec.add_bos
    tok.update_post_processor()  # rebuild the encode-time template (BOS in front, or nothing) from the above
    tok.chat_template = text
    return tok
